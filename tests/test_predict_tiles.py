"""Predicting large images by tiles + the whole image: full-image boxes from every backend."""

import numpy as np
import pytest
import torch
from export_helpers import CLASSES, assert_same_detections, scored_checkpoint
from fixtures import write_image
from PIL import Image
from torch.nn import functional as F

import tinyssd
from tinyssd.boxes import box_iou
from tinyssd.checkpoint import read_checkpoint, save_checkpoint, split_state
from tinyssd.data import DetectionDataset, Record, Split
from tinyssd.data.base import read_image
from tinyssd.inference import predict_dataset
from tinyssd.models import build_model
from tinyssd.postprocess import EVAL_POSTPROCESS
from tinyssd.tiling import Tiling, crop_windows, predict_tiled

SQUARES = [(100, 100), (590, 310), (1000, 1150), (395, 800)]  # top-left corners, 20 px


def _bright_boxes(batch, sizes):
    """A hand-built detector: each bright blob of a crop at least 4 input pixels wide,
    boxed in that crop's pixels; its score is how square the box is (a square cut by the
    crop's edge scores lower)."""
    out = []
    for image, (h, w) in zip(batch, sizes):
        mask = (image.float().mean(0) > 200).float()
        # connected blobs: each pixel takes the largest index of its 8-neighbours, to a fixpoint
        ids = (torch.arange(mask.numel(), dtype=torch.float32).view(mask.shape) + 1) * mask
        while True:
            grown = F.max_pool2d(ids[None, None], 3, 1, 1)[0, 0] * mask
            if torch.equal(grown, ids):
                break
            ids = grown
        boxes, scores = [], []
        for blob in ids.unique()[1:]:
            ys, xs = (ids == blob).nonzero(as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            side = box[2:] - box[:2]
            if side.min() < 4:  # a few input pixels: missed, as by a network
                continue
            boxes.append(box * torch.tensor([w, h, w, h]) / image.shape[-1])
            scores.append(float(side.min() / side.max()))
        out.append(
            {
                "boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
                "scores": torch.tensor(scores),
                "labels": torch.ones(len(scores), dtype=torch.int64),
            }
        )
    return out


def test_windows_are_the_tiles_then_the_whole_image_or_the_whole_image_alone():
    tiling = Tiling(400, 0.2)
    assert crop_windows((600, 500), tiling).tolist() == [[0, 0, 500, 600]]  # <= 1.5 tiles
    windows = crop_windows((1000, 1000), tiling)
    assert len(windows) == 10 and windows[-1].tolist() == [0, 0, 1000, 1000]
    assert crop_windows((1000, 1000), None).tolist() == [[0, 0, 1000, 1000]]


def test_a_large_image_is_predicted_by_tiles_into_full_image_boxes(tmp_path):
    pixels = np.full((1200, 1200, 3), 40, np.uint8)
    for x, y in SQUARES:
        pixels[y : y + 20, x : x + 20] = 255
    Image.fromarray(pixels).save(tmp_path / "large.png")
    image = read_image(tmp_path / "large.png")
    # tiles of 256 -> input 128: each square keeps 10 input pixels (whole: 2, missed)
    (dets,) = predict_tiled(_bright_boxes, [image], 128, Tiling(256, 0.2), 0.45, 100)
    want = torch.tensor([[x, y, x + 20, y + 20] for x, y in SQUARES], dtype=torch.float32)
    best = dets["boxes"][dets["scores"] > 0.8]  # the squares seen whole in some tile
    assert len(best) == len(SQUARES)  # each found once: the copies of the overlaps merged
    iou = box_iou(want, best)
    assert bool((iou.max(dim=1).values >= 0.85).all()), iou  # an input pixel is 2 image px
    # a square cut by a tile's edge is also seen in part; NMS keeps the whole one
    assert bool((box_iou(dets["boxes"], want).max(dim=1).values > 0).all())


def _tiled_checkpoint(path, image_size, tile):
    """``scored_checkpoint`` as if trained with ``--tile tile``."""
    tensors, meta = read_checkpoint(scored_checkpoint(path, image_size))
    model = build_model("tiny_ssd", len(CLASSES), image_size=image_size)
    model.load_state_dict(split_state(tensors, "model."))
    config = {**meta["config"], "train": {"tile": tile, "tile_overlap": 0.25}}
    return save_checkpoint(path, model, config)


def test_torch_and_onnx_predictors_agree_on_a_large_image(tmp_path):
    pytest.importorskip("onnxruntime")
    from tinyssd.export.onnx import export_onnx
    from tinyssd.predict import OnnxDetector

    ckpt = _tiled_checkpoint(tmp_path / "best.safetensors", 128, 256)
    det = tinyssd.load(ckpt, device="cpu", precision="fp32")
    onnx_det = OnnxDetector(export_onnx(ckpt, tmp_path / "model.onnx"))
    assert det.tiling == onnx_det.tiling == Tiling(256, 0.25)
    image = write_image(tmp_path / "large.png", 900, 600, seed=5)
    (want,) = det.predict(image, threshold=0.3)
    (got,) = onnx_det.predict(image, threshold=0.3)
    assert len(want["boxes"]) > 0
    assert float(want["boxes"][:, 2].max()) > 256  # full-image pixels, not one tile's
    assert_same_detections(got, want, box_atol=1e-3)


def test_val_of_a_tiled_model_is_scored_on_full_images_predicted_by_tiles(tmp_path):
    ckpt = _tiled_checkpoint(tmp_path / "best.safetensors", 128, 256)
    det = tinyssd.load(ckpt, device="cpu", precision="fp32")
    paths = [
        write_image(tmp_path / f"{i}.png", w, h, seed=i)
        for i, (w, h) in enumerate([(900, 600), (200, 150)])
    ]
    split = Split([Record.make(p, [[0, 0, 10, 10]], [1]) for p in paths], CLASSES, tmp_path)
    dataset = DetectionDataset(split, 128, tiling=det.tiling)
    assert dataset[0][0].shape == (3, 128, 128)  # training's view stays S x S
    assert dataset.load_image(0).shape == (3, 600, 900)  # held whole for the tiles
    got = predict_dataset(det.model, dataset, batch_size=4)
    want = det.predict(paths, post=EVAL_POSTPROCESS)  # what evaluation selects
    for g, w in zip(got, want):
        assert_same_detections(g, w, box_atol=1e-3)
