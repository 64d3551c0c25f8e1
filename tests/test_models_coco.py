"""torchvision's COCO SSD300 and SSDlite320 in tinyssd: every tensor placed, the same detections.

No test touches the network: torchvision's download is replaced by one that
fails, and the "COCO" files are torchvision's own detectors with random
weights, saved under the COCO file name where torchvision's cache keeps it.
"""

import os
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large

from tinyssd.errors import CheckpointError, UsageError
from tinyssd.export.onnx import export_onnx
from tinyssd.models.coco import (
    COCO_POSTPROCESS,
    COCO_WEIGHTS,
    coco_config,
    convert_state_dict,
    load_coco_detector,
)
from tinyssd.models.ssd import SSD
from tinyssd.options import PostprocessConfig
from tinyssd.predict import load, load_onnx

BUILDERS = {
    "ssdlite320_mobilenet_v3_large": ssdlite320_mobilenet_v3_large,
    "ssd300_vgg16": ssd300_vgg16,
}
BANANAS = Path("/work/shared/data/banana-detection/bananas_val/images")
# SSD300 (VGG16, 35 M parameters) is slow on a CPU: its end-to-end comparisons are marked
MODELS = [
    "ssdlite320_mobilenet_v3_large",
    pytest.param("ssd300_vgg16", marks=pytest.mark.slow),
]


def torchvision_model(name: str) -> nn.Module:
    """torchvision's detector with random weights spread so that its outputs vary: convs
    He-initialised, BatchNorm with non-trivial statistics (its own init gives near-zero logits)."""
    torch.manual_seed(0)
    model = BUILDERS[name](weights=None, weights_backbone=None)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                if layer.bias is not None:
                    nn.init.normal_(layer.bias, std=0.1)
            elif isinstance(layer, nn.BatchNorm2d):
                nn.init.uniform_(layer.weight, 0.5, 1.5)
                nn.init.normal_(layer.bias, std=0.1)
                assert layer.running_mean is not None and layer.running_var is not None
                layer.running_mean.normal_(std=0.1)
                layer.running_var.uniform_(0.5, 2.0)
    model.eval()
    # each head's last conv scaled so its outputs have a trained model's spread (logits
    # std 3, offsets 0.5) rather than saturated scores and exp(20)-fold boxes
    size = model.transform.fixed_size[0]
    with torch.no_grad():
        batch = model.transform([torch.rand(3, size, size)])[0]
        feats = list(model.backbone(batch.tensors).values())
        for heads, target in (
            (model.head.classification_head, 3.0),
            (model.head.regression_head, 0.5),
        ):
            for block, feat in zip(heads.module_list, feats, strict=True):
                last = [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1]
                factor = target / float(block(feat).std())
                last.weight.mul_(factor)
                last.bias.mul_(factor)
    return model


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A ``$TORCH_HOME`` whose cache holds both "COCO" files; the torchvision models."""
    home = tmp_path_factory.mktemp("torch")
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    models = {}
    for name in BUILDERS:
        models[name] = torchvision_model(name)
        torch.save(models[name].state_dict(), folder / os.path.basename(COCO_WEIGHTS[name].url))
    return home, models


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """A download that fails as it does without a network, and an empty ``$TORCH_HOME``."""

    def no_network(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def cached(cache, offline, monkeypatch):
    home, models = cache
    monkeypatch.setenv("TORCH_HOME", str(home))
    return models


def images_at(size: int, folder: Path) -> list[Path]:
    """Three photos at the model's input side (the banana set's when present, else
    synthetic ones), written as PNG: both models then see exactly these pixels."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        source = BANANAS / f"{i}.png"
        if source.is_file():
            picture = Image.open(source).convert("RGB").resize((size, size), Image.BILINEAR)
        else:
            noise = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
            picture = Image.fromarray(noise).resize((size, size), Image.BILINEAR)
        paths.append(folder / f"{i}.png")
        picture.save(paths[-1])
    return paths


def torchvision_detections(model: nn.Module, paths: list[Path], post: PostprocessConfig):
    model.score_thresh, model.nms_thresh = post.score_threshold, post.nms_threshold
    model.topk_candidates, model.detections_per_img = post.topk_candidates, post.max_detections
    pixels = [torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in paths]
    with torch.no_grad():
        return model([p.float() / 255 for p in pixels])


def candidate_threshold(model: SSD, paths: list[Path], count: int = 120) -> float:
    """A score threshold that about ``count`` (anchor, class) pairs per image pass: fewer
    than either top-k, where torchvision's per-class and tinyssd's per-image top-k agree."""
    pixels = torch.stack(
        [torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in paths]
    )
    with torch.no_grad():
        scores = torch.softmax(model.eval()(pixels)[1], dim=-1)[..., 1:]
    top = scores.flatten(1).topk(count + 1, dim=1).values  # (B, count + 1)
    return float((top[:, -2] + top[:, -1]).min() / 2)


def by_label(record: dict, n: int | None = None) -> tuple:
    """The first ``n`` detections ordered by label, then score: two near-equal scores of
    different classes may come in either order after float rounding."""
    labels, scores, boxes = record["labels"][:n], record["scores"][:n], record["boxes"][:n]
    order = torch.argsort(labels * 10 + scores)  # scores < 1: label first
    return labels[order], scores[order], boxes[order]


def assert_same_detections(ours: list[dict], theirs: list[dict], prefix: bool = False) -> None:
    """Same labels, scores (1e-5) and pixel boxes (1e-3); with ``prefix``, ours are
    torchvision's first ones."""
    for a, b in zip(ours, theirs, strict=True):
        n = len(a["labels"])
        assert n > 0 and (prefix or n == len(b["labels"]))
        (la, sa, ba), (lb, sb, bb) = by_label(a), by_label(b, n)
        torch.testing.assert_close(la, lb, rtol=0, atol=0)
        torch.testing.assert_close(sa, sb, rtol=0, atol=1e-5)
        torch.testing.assert_close(ba, bb, rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------- the tensors


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_torchvision_tensor_has_a_place_and_fills_one(name, cache):
    state = cache[1][name].state_dict()
    model = SSD(90, coco_config(name))
    converted = convert_state_dict(state, model)
    assert set(converted) == set(model.state_dict())
    assert len(converted) == len(state)  # one to one
    assert sorted(v.data_ptr() for v in converted.values()) == sorted(
        v.data_ptr() for v in state.values()
    )
    with pytest.raises(ValueError, match="missing"):
        convert_state_dict({k: v for k, v in state.items() if "regression" not in k}, model)
    with pytest.raises(ValueError, match="head.extra.weight has no place"):
        convert_state_dict({**state, "head.extra.weight": torch.zeros(1)}, model)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_raw_head_outputs_and_anchors_equal_torchvision(name, cached):
    tv = cached[name]
    model, classes = load_coco_detector(name, progress=False)
    size = model.config.image_size
    images = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        anchors, cls_logits, box_deltas = model(images)
        batch = tv.transform([images[0].float() / 255])[0]
        feats = list(tv.backbone(batch.tensors).values())
        head = tv.head(feats)
        tv_anchors = tv.anchor_generator(batch, feats)[0]
    scale = head["cls_logits"].abs().max()
    torch.testing.assert_close(cls_logits, head["cls_logits"], rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(
        box_deltas.reshape(1, -1, 4), head["bbox_regression"], rtol=0, atol=1e-5 * scale
    )
    torch.testing.assert_close(anchors[0] * size, tv_anchors, rtol=0, atol=1e-3)
    assert classes[0] == "person" and classes[89] == "toothbrush" and len(classes) == 90
    assert classes == COCO_WEIGHTS[name].meta["categories"][1:]


def test_postprocess_settings_are_torchvisions():
    for name, post in COCO_POSTPROCESS.items():
        tv = BUILDERS[name](weights=None, weights_backbone=None, num_classes=2)
        assert (post.score_threshold, post.nms_threshold) == (tv.score_thresh, tv.nms_thresh)
        assert (post.topk_candidates, post.max_detections) == (
            tv.topk_candidates,
            tv.detections_per_img,
        )


# ---------------------------------------------------------------------------- detections


@pytest.mark.parametrize("name", MODELS)
def test_predict_and_onnx_give_torchvisions_detections(name, cached, tmp_path):
    det = load(f"coco:{name}", device="cpu", precision="fp32")
    paths = images_at(det.image_size, tmp_path / "images")
    threshold = candidate_threshold(load_coco_detector(name, progress=False)[0], paths)
    post = PostprocessConfig(
        score_threshold=threshold, nms_threshold=0.45, topk_candidates=400, max_detections=200
    )
    theirs = torchvision_detections(cached[name], paths, post)
    assert_same_detections(det.predict(paths, post=post), theirs)
    assert det.predict(paths[:1], post=post)[0]["names"][0] in det.classes
    # `tinyssd export --weights coco:NAME`: the graph keeps the detector's own settings
    # where post leaves them open (no box voting, as torchvision)
    graph = export_onnx(f"coco:{name}", tmp_path / "coco.onnx", post=post)
    assert_same_detections(load_onnx(graph).predict(paths, post=post), theirs)


def test_at_torchvisions_own_settings_the_detections_are_its_first_ones(cached, tmp_path):
    # torchvision keeps the top-k per class before NMS, tinyssd per image: a prefix
    name = "ssdlite320_mobilenet_v3_large"
    det = load(f"coco:{name}", device="cpu", precision="fp32")
    paths = images_at(det.image_size, tmp_path / "images")
    post = COCO_POSTPROCESS[name]
    ours = det.predict(paths, post=post)
    theirs = torchvision_detections(cached[name], paths, post)
    assert_same_detections(ours, theirs, prefix=True)
    assert any(len(a["labels"]) < len(b["labels"]) for a, b in zip(ours, theirs, strict=True))


# ---------------------------------------------------------------------------- errors


def test_offline_without_the_file_is_one_line_naming_file_folder_and_url(offline):
    weights = COCO_WEIGHTS["ssdlite320_mobilenet_v3_large"]
    with pytest.raises(CheckpointError) as e:
        load("coco:ssdlite320_mobilenet_v3_large", device="cpu")
    message = str(e.value)
    file = offline / "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"
    assert message.startswith(
        f"coco:ssdlite320_mobilenet_v3_large: {file.name} is not in {offline} "
    )
    assert f"download {weights.url} and put it at {file}" in message
    assert "\n" not in message and not file.exists()


def test_a_corrupt_file_is_one_line(offline):
    offline.mkdir(parents=True)
    file = offline / "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"
    file.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="not a readable weights file .*delete it") as e:
        load("coco:ssdlite320_mobilenet_v3_large", device="cpu")
    assert str(e.value).startswith(str(file)) and "\n" not in str(e.value)
    assert file.read_bytes() == b"not a pickle"  # the user's file is left as it is


def test_a_file_of_other_weights_is_one_line(offline):
    from torchvision.models import mobilenet_v3_large

    offline.mkdir(parents=True)
    file = offline / "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"
    torch.save(mobilenet_v3_large().state_dict(), file)
    with pytest.raises(CheckpointError) as e:
        load("coco:ssdlite320_mobilenet_v3_large", device="cpu")
    assert str(e.value).startswith(f"{file}: not torchvision's ")
    assert "has no place" in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_coco_name_is_a_usage_error():
    with pytest.raises(UsageError, match="coco:yolo: no such COCO detector .*coco:ssd300_vgg16"):
        load("coco:yolo")
