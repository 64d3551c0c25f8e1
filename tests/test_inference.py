"""tinyssd.inference: device and precision resolution, autocast, batched prediction."""

import subprocess
import sys

import pytest
import torch

from tinyssd.errors import UsageError
from tinyssd.inference import autocast, predict_batch, resolve_device, resolve_precision
from tinyssd.models import build_model


def test_fp32_means_no_autocast_and_auto_follows_the_hardware():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("auto", cpu) in (None, torch.bfloat16)


def test_unknown_precision_and_missing_cuda_are_usage_errors():
    with pytest.raises(UsageError, match="--precision 'fp8'"):
        resolve_precision("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="--device cuda: no CUDA device"):
            resolve_device("cuda")


def test_autocast_none_is_plain_fp32_and_bf16_casts_matmuls():
    x = torch.randn(4, 4)
    with autocast("cpu", None):
        assert (x @ x).dtype == torch.float32
    with autocast("cpu", torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16


def test_predict_batch_restores_the_training_mode_and_scales_boxes():
    torch.manual_seed(0)
    model = build_model("tiny_ssd", 2, image_size=64).train()
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    dets = predict_batch(model, images, [(100, 200), (64, 64)], score_threshold=0.0)
    assert model.training
    assert len(dets) == 2
    assert dets[0]["boxes"][:, [0, 2]].max() <= 200 + 1e-3
    assert dets[0]["boxes"][:, [1, 3]].max() <= 100 + 1e-3


IMPORT_PROBE = """
import sys
import matplotlib
matplotlib.use("{backend}")
import tinyssd, tinyssd.boxes
tinyssd.train, tinyssd.load  # the lazy names resolve
import tinyssd.viz, tinyssd.engine.train
print(matplotlib.get_backend())
"""


def test_importing_tinyssd_leaves_the_matplotlib_backend_as_it_was():
    probe = IMPORT_PROBE.format(backend="svg")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().lower() == "svg"


def test_importing_the_maths_does_not_load_matplotlib_or_the_training_engine():
    probe = (
        "import sys, tinyssd.boxes, tinyssd.matching, tinyssd.postprocess\n"
        "heavy = [m for m in ('matplotlib', 'yaml', 'tinyssd.engine.train', 'tinyssd.data')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("cuda", "mps", "want"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_takes_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto").type == want


def test_mps_where_there_is_none_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UsageError, match=r"^--device mps: no Apple GPU \(MPS\) is available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    assert resolve_precision("auto", torch.device("mps")) is None  # fp32 on Apple GPUs


def test_every_device_choice_of_the_cli_is_resolved(monkeypatch):
    from tinyssd.options import DEVICES

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert [resolve_device(d).type for d in DEVICES] == ["cuda", "cpu", "cuda", "mps"]
