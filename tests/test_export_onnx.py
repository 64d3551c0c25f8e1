import json
import warnings

import numpy as np
import pytest
import torch
from export_helpers import (
    CLASSES,
    assert_same_detections,
    rewritten_checkpoint,
    run_json_snippet,
    scored_checkpoint,
)
from fixtures import write_image
from torchvision.ops import batched_nms

import tinyssd
from tinyssd.checkpoint import save_checkpoint
from tinyssd.cli import main
from tinyssd.export import onnx as export_module
from tinyssd.export.onnx import (
    DetectionWrapper,
    ExportWrapper,
    export_onnx,
    greedy_nms,
    max_opset,
)
from tinyssd.models import TinySSD, build_model
from tinyssd.models.fuse import fold_batchnorm
from tinyssd.postprocess import postprocess_detections

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    model = TinySSD(2).eval()
    config = {
        "model": "tiny_ssd",
        "num_classes": 2,
        "classes": ["cat", "dog"],
        "ssd": model.config.to_dict(),
    }
    return model, save_checkpoint(tmp_path / "best.safetensors", model, config)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _thresholds(score=0.01, iou=0.45):
    return {
        "score_threshold": np.array(score, np.float32),
        "iou_threshold": np.array(iou, np.float32),
    }


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Per input size: (fp32 model as exported, .onnx with NMS, .onnx without)."""
    cache = {}

    def get(size):
        if size not in cache:
            root = tmp_path_factory.mktemp(f"export{size}")
            ckpt = scored_checkpoint(root / "best.safetensors", size)
            cache[size] = (
                tinyssd.load(ckpt, device="cpu", precision="fp32").model.eval(),
                export_onnx(ckpt, root / "nms.onnx"),
                export_onnx(ckpt, root / "raw.onnx", nms=False),
            )
        return cache[size]

    return get


def _images(batch, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)


def test_onnx_export_matches_pytorch_and_keeps_class_names(tmp_path):
    model, ckpt = _checkpoint(tmp_path)
    path = export_onnx(ckpt, tmp_path / "model.onnx", nms=False, input_dtype="float32")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["cat", "dog"]

    images = torch.rand(2, 3, 256, 256) * 255  # batch 2: the batch axis is dynamic
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        want_boxes, want_scores = ExportWrapper(model)(images)
    assert boxes.shape == (2, 5444, 4) and scores.shape == (2, 5444, 3)
    np.testing.assert_allclose(boxes, want_boxes.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, want_scores.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size,batch", [(128, 1), (128, 4), (256, 1), (256, 4)])
def test_raw_outputs_of_uint8_graph_match_pytorch_within_1e4(exports, size, batch):
    model, _, raw = exports(size)
    images = _images(batch, size)
    boxes, scores = _session(raw).run(None, {"images": images.numpy()})
    with torch.no_grad():
        want_boxes, want_scores = ExportWrapper(model)(images)
    np.testing.assert_allclose(boxes, want_boxes.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, want_scores.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,batch", [(128, 1), (128, 4), (256, 1), (256, 4)])
@pytest.mark.parametrize("score,iou", [(0.01, 0.45), (0.5, 0.6)])
def test_graph_detections_are_postprocess_detections(exports, size, batch, score, iou):
    model, path, _ = exports(size)
    images = _images(batch, size, seed=1)
    boxes, scores, labels, counts = _session(path).run(
        None, {"images": images.numpy(), **_thresholds(score, iou)}
    )
    with torch.no_grad():
        anchors, cls_logits, box_deltas = model(images)
    want = postprocess_detections(cls_logits, box_deltas, anchors, score, iou)
    for b, w in enumerate(want):
        assert len(w["labels"]) > 0
        n = counts[b]
        got = {"boxes": boxes[b, :n] / size, "scores": scores[b, :n], "labels": labels[b, :n]}
        assert_same_detections(got, w, box_atol=1e-5)


def test_rows_after_num_detections_are_zero_and_max_detections_sets_their_number(tmp_path):
    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    path = export_onnx(ckpt, tmp_path / "m.onnx", max_detections=50)
    boxes, scores, labels, counts = _session(path).run(
        None, {"images": _images(3, 128).numpy(), **_thresholds(0.5)}
    )
    assert boxes.shape == (3, 50, 4) and scores.shape == labels.shape == (3, 50)
    assert labels.dtype == counts.dtype == np.int64
    for b, n in enumerate(counts):
        assert 0 < n <= 50
        assert (labels[b, :n] >= 1).all() and (np.diff(scores[b, :n]) <= 0).all()
        assert not boxes[b, n:].any() and not scores[b, n:].any() and not labels[b, n:].any()


def test_float_input_graph_gives_the_uint8_graphs_detections(tmp_path, exports):
    _, uint8_path, _ = exports(128)
    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    float_path = export_onnx(ckpt, tmp_path / "float.onnx", input_dtype="float32")
    images = _images(2, 128).numpy()
    assert _session(float_path).get_inputs()[0].type == "tensor(float)"
    got = _session(float_path).run(None, {"images": images.astype(np.float32), **_thresholds()})
    want = _session(uint8_path).run(None, {"images": images, **_thresholds()})
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_graph_inputs_outputs_and_metadata(exports):
    _, path, raw = exports(128)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {op.domain: op.version for op in proto.opset_import}[""] == 17
    assert "NonMaxSuppression" in {node.op_type for node in proto.graph.node}
    session = _session(path)
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("images", "tensor(uint8)", ["batch", 3, 128, 128]),
        ("score_threshold", "tensor(float)", []),
        ("iou_threshold", "tensor(float)", []),
    ]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("boxes", ["batch", 200, 4]),
        ("scores", ["batch", 200]),
        ("labels", ["batch", 200]),
        ("num_detections", ["batch"]),
    ]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == CLASSES
    assert meta["image_size"] == "128" and meta["nms"] == "true" and meta["model"] == "tiny_ssd"
    assert json.loads(meta["pixel_mean"]) == [0, 0, 0] and json.loads(meta["pixel_std"]) == [
        1,
        1,
        1,
    ]
    assert meta["topk_candidates"] == "400" and meta["max_detections"] == "200"
    raw_meta = _session(raw).get_modelmeta().custom_metadata_map
    assert raw_meta["nms"] == "false" and json.loads(raw_meta["classes"]) == CLASSES


@pytest.mark.parametrize("nms", [True, False])
def test_export_raises_no_warnings(tmp_path, nms):
    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # TracerWarning included
        export_onnx(ckpt, tmp_path / "m.onnx", nms=nms)


def _export_error(capsys, *argv) -> str:
    """``tinyssd export ARGV``: exit code 2, stderr one line, which is returned."""
    code = main(["export", *argv])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1, captured
    assert err.startswith("tinyssd: error: ") and "Traceback" not in err
    return err


def test_an_opset_tinyssd_does_not_export_is_one_line_naming_the_option(tmp_path, capsys):
    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    newest = max_opset()
    assert newest >= 17
    for opset in (5, 16, newest + 1):
        out = tmp_path / f"opset{opset}.onnx"
        err = _export_error(
            capsys, "--weights", str(ckpt), "--out", str(out), "--opset", str(opset)
        )
        assert err == f"tinyssd: error: --opset {opset}: tinyssd exports opsets 17 to {newest}"
        assert not out.exists()


def test_export_of_nan_weights_is_refused_and_writes_nothing(tmp_path, capsys):
    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    bad = rewritten_checkpoint(ckpt, tmp_path / "diverged.safetensors", poison=float("nan"))
    out = tmp_path / "m.onnx"
    err = _export_error(capsys, "--weights", str(bad), "--out", str(out))
    assert err.startswith(f"tinyssd: error: {bad}: weights hold NaN (model.")
    assert not out.exists()


def test_a_failed_export_leaves_the_earlier_graph_as_it_was(tmp_path, capsys, monkeypatch):
    ckpt = scored_checkpoint(tmp_path / "best.safetensors", 128)
    out = export_onnx(ckpt, tmp_path / "m.onnx")
    before = out.read_bytes()

    def full_disk(path, meta):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(export_module, "_add_metadata", full_disk)
    err = _export_error(capsys, "--weights", str(ckpt), "--out", str(out), "--overwrite")
    assert "No space left on device" in err
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [
        "best.safetensors",
        "m.onnx",
    ]


def test_exported_graph_runs_in_plain_onnxruntime(exports, tmp_path):
    _, path, _ = exports(128)
    snippet = f"""
        import json, sys
        import numpy as np, onnxruntime as ort

        session = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        size, classes = int(meta["image_size"]), json.loads(meta["classes"])
        images = np.random.default_rng(0).integers(0, 256, (2, 3, size, size), dtype=np.uint8)
        feed = {{"images": images, "score_threshold": np.array(0.3, np.float32),
                "iou_threshold": np.array(0.45, np.float32)}}
        boxes, scores, labels, counts = session.run(None, feed)
        names = [classes[i - 1] for i in labels[0, : counts[0]]]
        assert not any(m.startswith("tinyssd") for m in sys.modules)
        print(json.dumps({{"counts": counts.tolist(), "names": sorted(set(names))}}))
    """
    result = run_json_snippet(snippet, tmp_path)
    assert len(result["counts"]) == 2 and min(result["counts"]) > 0
    assert set(result["names"]) <= set(CLASSES)


def test_greedy_nms_keeps_what_torchvision_batched_nms_keeps():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 60, 2, generator=g)
    boxes = torch.cat((xy, xy + 0.05 + 0.3 * torch.rand(2, 60, 2, generator=g)), dim=-1)
    scores = torch.rand(2, 3, 60, generator=g)
    scores[scores < 0.2] = -1.0  # not candidates
    selected = greedy_nms(boxes, scores, torch.tensor(0.45), min_score=-0.5)
    for b in range(2):
        for c in range(3):
            idx = (scores[b, c] > -0.5).nonzero()[:, 0]
            want = idx[batched_nms(boxes[b, idx], scores[b, c, idx], torch.zeros_like(idx), 0.45)]
            got = selected[(selected[:, 0] == b) & (selected[:, 1] == c), 2]
            torch.testing.assert_close(got, want)


def test_detection_wrapper_run_eagerly_is_postprocess_detections():
    torch.manual_seed(0)
    model = fold_batchnorm(build_model("tiny_ssd", 2, image_size=128)).eval()
    images = _images(2, 128)
    with torch.no_grad():
        boxes, scores, labels, counts = DetectionWrapper(model, 128)(
            images, torch.tensor(0.01), torch.tensor(0.45)
        )
        anchors, cls_logits, box_deltas = model(images)
    want = postprocess_detections(cls_logits, box_deltas, anchors, 0.01, 0.45)
    for b, w in enumerate(want):
        n = counts[b]
        got = {"boxes": boxes[b, :n] / 128, "scores": scores[b, :n], "labels": labels[b, :n]}
        assert_same_detections(got, w, box_atol=1e-6)


def test_tiny_fpn_p2_exports_to_onnx_and_int8_with_its_stride_4_map(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny_fpn_p2", len(CLASSES), image_size=128)
    with torch.no_grad():  # BatchNorm statistics other than 0 and 1
        model.train()(_images(4, 128, seed=2))
    model.eval()
    config = {
        "model": "tiny_fpn_p2",
        "num_classes": len(CLASSES),
        "classes": CLASSES,
        "ssd": model.config.to_dict(),
    }
    ckpt = save_checkpoint(tmp_path / "best.safetensors", model, config)
    raw = export_onnx(ckpt, tmp_path / "raw.onnx", nms=False)
    images = _images(2, 128)
    boxes, scores = _session(raw).run(None, {"images": images.numpy()})
    with torch.no_grad():
        want_boxes, want_scores = ExportWrapper(model)(images)
    # maps 32, 16, 8, 4, 2, 1 at 128 px, 6 anchors per cell
    assert boxes.shape == (2, 6 * (1024 + 256 + 64 + 16 + 4 + 1), 4)
    np.testing.assert_allclose(boxes, want_boxes.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, want_scores.numpy(), rtol=1e-4, atol=1e-4)

    for i in range(4):
        write_image(tmp_path / "calibration" / f"{i}.png", 128, 128, seed=i)
    int8 = export_onnx(
        ckpt, tmp_path / "int8.onnx", int8=True, calibration=tmp_path / "calibration"
    )
    nodes = {n.name: n for n in onnx.load(str(int8)).graph.node}
    for conv in ("/model/backbone/lateral2/Conv", "/model/backbone/smooth2/smooth2.0/Conv"):
        assert all(name.endswith("DequantizeLinear_Output") for name in nodes[conv].input[:2])
    _, _, _, counts = _session(int8).run(None, {"images": images.numpy(), **_thresholds()})
    assert counts.shape == (2,)
