import numpy as np
import pytest
import torch
from export_helpers import CLASSES, assert_same_detections, rewritten_graph, scored_checkpoint
from fixtures import write_image
from PIL import Image

import tinyssd
from tinyssd.cli import main
from tinyssd.data.base import read_image
from tinyssd.export.onnx import export_onnx
from tinyssd.options import DEFAULT_BOX_VOTE
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


def _predict_error(capsys, weights, image, tmp_path, *options) -> str:
    """``tinyssd predict`` with ``weights``: exit code 2, nothing on stdout, and stderr
    one line, which is returned."""
    argv = ["predict", str(image), "--weights", str(weights), "--out", str(tmp_path / "out")]
    code = main([*argv, *options])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and captured.out == "" and len(err.splitlines()) == 1, captured
    assert err.startswith("tinyssd: error: ") and "Traceback" not in err
    return err


def test_max_detections_beyond_the_exported_number_is_an_error(
    detectors, image_files, tmp_path, capsys
):
    _, onnx_det = detectors(128)
    with pytest.raises(tinyssd.UsageError, match="exported with max_detections 200"):
        onnx_det.predict(image_files[0], max_detections=201)
    err = _predict_error(capsys, onnx_det.path, image_files[0], tmp_path, "--max-detections", "201")
    assert err == (
        f"tinyssd: error: --max-detections 201: {onnx_det.path} was exported with "
        "max_detections 200; export again with a larger --max-detections"
    )


def test_box_voting_is_fixed_in_the_graph_and_another_is_an_error(
    detectors, image_files, tmp_path, capsys
):
    det, onnx_det = detectors(128)
    assert onnx_det.box_vote == DEFAULT_BOX_VOTE  # the graph votes as the checkpoint does
    same = onnx_det.predict(image_files[1], threshold=0.05, box_vote=DEFAULT_BOX_VOTE)[0]
    assert_same_detections(same, det.predict(image_files[1], threshold=0.05)[0], box_atol=1e-3)
    with pytest.raises(tinyssd.UsageError, match="exported with box_vote 0.05"):
        onnx_det.predict(image_files[0], box_vote=0.0)
    err = _predict_error(capsys, onnx_det.path, image_files[0], tmp_path, "--box-vote", "0.1")
    assert err == (
        f"tinyssd: error: --box-vote 0.1: {onnx_det.path} was exported with box_vote 0.05 "
        "(fixed in the graph); export again with --box-vote 0.1"
    )


def test_a_graph_without_voting_gives_the_checkpoints_unvoted_boxes(
    detectors, image_files, tmp_path
):
    import onnx

    det, onnx_det = detectors(128)
    plain = OnnxDetector(export_onnx(det_checkpoint(onnx_det), tmp_path / "p.onnx", box_vote=0.0))
    assert plain.box_vote == 0.0
    want = det.predict(image_files[1], threshold=0.05, box_vote=0.0)[0]
    assert_same_detections(plain.predict(image_files[1], threshold=0.05)[0], want, box_atol=1e-3)
    # a graph exported before box voting (no box_vote in its metadata) does not vote either
    proto = onnx.load(str(plain.path))
    kept = [p for p in proto.metadata_props if p.key != "box_vote"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    assert OnnxDetector(tmp_path / "old.onnx").box_vote == 0.0


def det_checkpoint(onnx_det: OnnxDetector):
    """The checkpoint the ``detectors`` fixture exported ``onnx_det`` from."""
    return onnx_det.path.parent / "best.safetensors"


def test_an_export_without_nms_is_refused_with_the_command_to_fix_it(tmp_path, image_files, capsys):
    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    raw = export_onnx(ckpt, tmp_path / "raw.onnx", nms=False)
    with pytest.raises(tinyssd.CheckpointError, match="--no-nms"):
        tinyssd.load(raw)
    err = _predict_error(capsys, raw, image_files[0], tmp_path)
    assert err == (
        f"tinyssd: error: {raw}: exported with --no-nms (raw boxes and scores, no NMS); "
        "predict needs the detections: write a graph with "
        "`tinyssd export --weights RUN --out FILE.onnx` (without --no-nms)"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(cut=0.5), "not a readable ONNX file (truncated?): Error parsing message"),
        (dict(classes="[nope"), "metadata classes is not JSON (Expecting value"),
        (dict(classes="[]"), "classes []: the model names no class"),
        (dict(classes='{"1": "cat"}'), "classes {'1': 'cat'}: not a list of class names"),
        (
            dict(image_size=str(10**9)),
            "image_size 1000000000: 1000000000x1000000000 input is over the pixel budget",
        ),
        (dict(image_size="big"), "metadata image_size 'big': not an integer"),
        (dict(image_size="64"), "metadata image_size 64, but the graph takes images of shape"),
        (dict(max_detections="0"), "metadata max_detections 0: must be > 0"),
        (dict(box_vote="2"), "metadata box_vote '2': not in [0, 1]"),
        (dict(box_vote="much"), "metadata box_vote 'much': not in [0, 1]"),
        (dict(poison=float("nan")), "weights hold NaN ("),
        (dict(poison=float("inf")), "weights hold inf ("),
    ],
)
def test_a_bad_onnx_file_is_one_line_naming_it(
    detectors, image_files, tmp_path, capsys, change, message
):
    bad = rewritten_graph(detectors(128)[1].path, tmp_path / "bad.onnx", **change)
    err = _predict_error(capsys, bad, image_files[0], tmp_path)
    assert err.startswith(f"tinyssd: error: {bad}: {message}"), err
    with pytest.raises(tinyssd.CheckpointError):
        tinyssd.load(bad)


def test_a_graph_predicting_more_classes_than_its_metadata_names_is_one_line(
    detectors, image_files, tmp_path, capsys
):
    bad = rewritten_graph(detectors(128)[1].path, tmp_path / "bad.onnx", classes='["cat"]')
    err = _predict_error(capsys, bad, image_files[1], tmp_path, "--threshold", "0.01")
    assert err == (
        f"tinyssd: error: {bad}: the graph predicts label 2 but its metadata classes list only 1"
    )


def test_a_file_that_is_not_onnx_at_all_is_one_line(image_files, tmp_path, capsys):
    text = tmp_path / "notes.onnx"
    text.write_text("not a graph\n")
    assert str(text) in _predict_error(capsys, text, image_files[0], tmp_path)


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
