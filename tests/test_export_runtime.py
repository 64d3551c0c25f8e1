import numpy as np
import pytest
import torch
from export_helpers import CLASSES, assert_same_detections, scored_checkpoint
from fixtures import write_image
from PIL import Image

import tinyssd
from tinyssd.data.base import read_image
from tinyssd.export.onnx import export_onnx
from tinyssd.predict import OnnxDetector

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# (width, height): smaller, larger, square and tall, as users' photos come
IMAGE_SIZES = [(64, 48), (300, 200), (256, 256), (97, 131)]


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    """Per input size S: (Detector in fp32, OnnxDetector of its export)."""
    cache = {}

    def get(size):
        if size not in cache:
            root = tmp_path_factory.mktemp(f"runtime{size}")
            ckpt = scored_checkpoint(root / "best.safetensors", size)
            cache[size] = (
                tinyssd.load(ckpt, device="cpu", precision="fp32"),
                OnnxDetector(export_onnx(ckpt, root / "model.onnx")),
            )
        return cache[size]

    return get


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return [write_image(root / f"{i}.png", w, h, seed=i) for i, (w, h) in enumerate(IMAGE_SIZES)]


def test_reads_classes_and_image_size_from_the_metadata(detectors):
    det, onnx_det = detectors(128)
    assert onnx_det.classes == det.classes == CLASSES
    assert onnx_det.image_size == det.image_size == 128


@pytest.mark.parametrize("size,batch", [(128, 1), (128, 4), (256, 1), (256, 4)])
@pytest.mark.parametrize("threshold", [0.05, 0.5])
def test_predict_gives_the_detectors_detections_in_each_images_pixels(
    detectors, image_files, size, batch, threshold
):
    det, onnx_det = detectors(size)
    files = image_files[:batch] if batch > 1 else image_files[1]
    got = onnx_det.predict(files, threshold=threshold)
    want = det.predict(files, threshold=threshold)
    assert len(got) == len(want) == batch
    for g, w in zip(got, want):
        assert len(w["labels"]) > 0
        assert_same_detections(g, w, box_atol=1e-3)  # pixels
        assert g["names"] == [CLASSES[i - 1] for i in g["labels"]]
        assert g["boxes"].dtype == torch.float32 and g["labels"].dtype == torch.int64


def test_predict_takes_nms_threshold_max_detections_and_any_image_kind(detectors, image_files):
    det, onnx_det = detectors(128)
    image = Image.open(image_files[1])
    kwargs = {"threshold": 0.05, "nms_threshold": 0.6, "max_detections": 7}
    got = onnx_det.predict([image, read_image(image_files[2])], **kwargs)
    want = det.predict([image, read_image(image_files[2])], **kwargs)
    for g, w in zip(got, want):
        assert len(g["labels"]) == 7
        assert_same_detections(g, w, box_atol=1e-3)


def test_both_predictors_take_every_image_kind_and_give_the_same_detections(detectors, tmp_path):
    det, onnx_det = detectors(128)
    paths = [write_image(tmp_path / f"{i}.png", 150, 100, seed=10 + i) for i in range(2)]
    tensors = [read_image(p) for p in paths]
    arrays = [t.permute(1, 2, 0).numpy() for t in tensors]
    kinds = {
        "path": paths[0],
        "str": str(paths[0]),
        "PIL": Image.open(paths[0]),
        "tensor": tensors[0],
        "array": arrays[0],
        "list": [paths[0], tensors[1]],
        "tuple": (Image.open(paths[0]), arrays[1]),
        "tensor batch": torch.stack(tensors),
        "array batch": np.stack(arrays),
    }
    for kind, images in kinds.items():
        got = onnx_det.predict(images, threshold=0.05)
        want = det.predict(images, threshold=0.05)
        assert (
            len(got) == len(want) == (1 if kind in ("path", "str", "PIL", "tensor", "array") else 2)
        )
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert len(w["labels"]) > 0, kind
            assert_same_detections(g, w, box_atol=1e-3)
            assert g["names"] == w["names"]
            # every kind of the same picture gives its detections
            torch.testing.assert_close(
                w["boxes"], det.predict(tensors[i], threshold=0.05)[0]["boxes"]
            )


def test_max_detections_beyond_the_exported_number_is_an_error(detectors, image_files):
    _, onnx_det = detectors(128)
    with pytest.raises(ValueError, match="exported with max_detections 200"):
        onnx_det.predict(image_files[0], max_detections=201)


def test_an_export_without_nms_is_refused_with_the_command_to_fix_it(tmp_path):
    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    raw = export_onnx(ckpt, tmp_path / "raw.onnx", nms=False)
    with pytest.raises(ValueError, match="--no-nms"):
        OnnxDetector(raw)


def test_float_input_export_predicts_the_same(detectors, image_files, tmp_path):
    _, onnx_det = detectors(128)
    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    float_det = OnnxDetector(export_onnx(ckpt, tmp_path / "float.onnx", input_dtype="float32"))
    for g, w in zip(float_det.predict(image_files, 0.05), onnx_det.predict(image_files, 0.05)):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(g[key], w[key], rtol=0, atol=0)


def test_load_of_an_onnx_file_gives_the_onnxruntime_detector(tmp_path):
    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx")
    det = tinyssd.load(onnx_path)
    assert isinstance(det, OnnxDetector) and det.classes == CLASSES
    with pytest.raises(tinyssd.UsageError, match="bf16"):
        tinyssd.load(onnx_path, precision="bf16")


def test_cli_predict_with_the_onnx_backend_prints_the_torch_backends_lines(
    tmp_path, capsys, image_files
):
    import json

    from tinyssd.cli import main

    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    lines = {}
    for backend in ("torch", "onnx"):
        args = ["predict", *map(str, image_files), "--weights", str(ckpt), "--threshold", "0.3"]
        args += ["--precision", "fp32", "--backend", backend, "--out", str(tmp_path / backend)]
        if backend == "onnx":
            args.remove("--precision"), args.remove("fp32")
        assert main(args) == 0
        lines[backend] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines["onnx"]) == len(image_files)
    for a, b in zip(lines["torch"], lines["onnx"], strict=True):
        assert (a["image"], a["width"], a["height"]) == (b["image"], b["width"], b["height"])
        # the same detections as sets; JSON rounds boxes to 0.01 px and scores to 1e-4
        assert sorted(a["labels"]) == sorted(b["labels"])
        assert sorted(a["scores"]) == pytest.approx(sorted(b["scores"]), abs=2e-4)
        for label, box in zip(a["labels"], a["boxes"], strict=True):
            nearest = min(
                max(abs(x - y) for x, y in zip(box, other, strict=True))
                for other_label, other in zip(b["labels"], b["boxes"], strict=True)
                if other_label == label
            )
            assert nearest <= 0.05
        assert Image.open(b["picture"]).size == (a["width"], a["height"])


def test_export_never_overwrites_a_file_unless_asked(tmp_path, capsys):
    from tinyssd.cli import main

    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    (tmp_path / "m.onnx").write_text("mine")
    assert main(["export", "--weights", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "m.onnx").read_text() == "mine"
    args = ["export", "--weights", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--overwrite"]
    assert main(args) == 0
    assert OnnxDetector(tmp_path / "m.onnx").classes == CLASSES
