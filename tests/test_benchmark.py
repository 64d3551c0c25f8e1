"""The figures `tinyssd bench` prints: what they count, not how fast this machine is."""

import json

import pytest

from tinyssd.cli import main
from tinyssd.engine import benchmark as B


def test_train_flops_per_image_are_the_models_forward_and_backward():
    # TinySSD at 256 px: 5.8 GFLOP per image forward + backward (the performance issue's figure)
    assert 5.7 < B.train_step_gflop_per_image() < 5.9


def test_images_per_second_counts_only_the_timed_batches(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(B.time, "perf_counter", lambda: float(next(clock)))
    seen = []
    batches = [B.synthetic_batch(4, 32, seed=i) for i in range(5)]
    rate = B.images_per_second(lambda images, labels: seen.append(len(images)), batches, warmup=2)
    assert seen == [4] * 5
    assert rate == pytest.approx(12 / 1.0)  # 3 timed batches of 4 images in one clock tick


@pytest.mark.slow
def test_cli_bench_prints_the_machines_figures_as_json(capsys):
    assert main(["bench", "--quick"]) == 0
    figures = json.loads(capsys.readouterr().out)
    for key in ("roofline_images_per_s", "train_images_per_s_fp32", "predict_ms_fp32",
                "predict_batch32_images_per_s"):  # fmt: skip
        assert figures[key] > 0
    assert figures["train_gflop_per_image"] == pytest.approx(5.8, abs=0.1)
