"""Box maths: IoU, corner <-> centre conversion, offset encoding and decoding, scaling
between pixels and [0, 1].

Every function takes and returns plain tensors. Corner boxes are (x1, y1, x2, y2)
with x2 > x1, y2 > y1; centre boxes are (cx, cy, w, h).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

# The chapter scales centre offsets by 10 and log-size offsets by 5:
# the SSD "variances" 0.1 and 0.2.
VARIANCES = (0.1, 0.2)
# Their inverses, 10 and 5, in the chapter's order of operations so that the
# results match the chapter's bit for bit.
_XY_SCALE, _WH_SCALE = 1 / VARIANCES[0], 1 / VARIANCES[1]
# Largest log-size offset decode will exponentiate (torchvision's bound):
# a box at most 1000/16 times its anchor.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def box_corner_to_center(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` xyxy -> ``Tensor[..., 4]`` cxcywh."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_center_to_corner(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` cxcywh -> ``Tensor[..., 4]`` xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU (torchvision's ``box_iou``).

    Args:
        boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]): xyxy.
    Returns:
        Tensor[N, M]: IoU of every pair, in [0, 1].
    """
    # imported here: `import torchvision` loads all its models, which the maths never needs
    from torchvision.ops import box_iou as tv_box_iou

    return tv_box_iou(boxes1, boxes2)


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of boxes taken in pairs, as their shapes broadcast: ``box_iou``'s arithmetic,
    so the same values bit for bit (``paired_box_iou(a[:, None], b) == box_iou(a, b)``),
    but 0, not NaN, for two boxes without area.

    Args:
        boxes1 (Tensor[..., 4]), boxes2 (Tensor[..., 4]): xyxy, broadcastable.
    Returns:
        Tensor[...]: the IoU of each pair.
    """
    x1, y1, x2, y2 = boxes1.unbind(-1)
    u1, v1, u2, v2 = boxes2.unbind(-1)
    inter = _overlap(x1, x2, u1, u2).mul_(_overlap(y1, y2, v1, v2))
    return _iou(inter, (x2 - x1) * (y2 - y1), (u2 - u1) * (v2 - v1))


def batched_box_iou(anchors: Tensor, boxes: Tensor) -> Tensor:
    """IoU of one set of anchors with each image's boxes.

    Same arithmetic as ``box_iou`` (so the same values, bit for bit), laid out
    with the anchors last because that is the long axis; built by
    ``anchor_iou_blocks``, so with no temporary larger than a block.

    Args:
        anchors (Tensor[A, 4]): xyxy.
        boxes (Tensor[B, M, 4]): xyxy, one set per image.
    Returns:
        Tensor[B, M, A]: IoU of box m of image b with anchor a.
    """
    dtype = torch.promote_types(anchors.dtype, boxes.dtype)
    out = anchors.new_empty(*boxes.shape[:-1], len(anchors), dtype=dtype)
    flat_out = out.view(math.prod(boxes.shape[:-1]), len(anchors))  # (B*M, A)
    for rows, iou in anchor_iou_blocks(anchors, boxes.reshape(-1, 4)):
        flat_out[rows] = iou
    return out


def anchor_iou_blocks(
    anchors: Tensor, boxes: Tensor, blocks: Iterable[slice] | None = None
) -> Iterator[tuple[slice, Tensor]]:
    """``box_iou(boxes, anchors)`` a block of boxes at a time, bit for bit.

    For a caller that keeps only part of each block (a best anchor, the k best):
    the table of all pairs is never held. The overlaps are computed on the
    anchors' distinct x and y extents, which the anchors of a grid share (a
    32 x 32 map of 4 shapes has 128 of each for 4096 anchors).

    Args:
        anchors (Tensor[A, 4]), boxes (Tensor[N, 4]): xyxy.
        blocks: the row ranges to yield; default ``block_rows`` rows at a time.
    Yields:
        (rows, Tensor[n, A]): the IoU of ``boxes[rows]`` with every anchor.
    """
    if not len(boxes):
        return
    if blocks is None:
        step = block_rows(len(anchors), anchors.device)
        blocks = (slice(start, start + step) for start in range(0, len(boxes), step))
    x_span, x_index = _distinct_spans(anchors[:, 0], anchors[:, 2])  # (X, 2), (A,)
    y_span, y_index = _distinct_spans(anchors[:, 1], anchors[:, 3])
    area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])  # (A,)
    for rows in blocks:
        x1, y1, x2, y2 = boxes[rows, None].unbind(-1)  # (n, 1) each
        iw = _overlap(x_span[:, 0], x_span[:, 1], x1, x2).index_select(1, x_index)  # (n, A)
        ih = _overlap(y_span[:, 0], y_span[:, 1], y1, y2).index_select(1, y_index)
        yield rows, _iou(iw.mul_(ih), area, (x2 - x1) * (y2 - y1))


def block_rows(num_anchors: int, device: torch.device | str) -> int:
    """How many boxes to pair with ``num_anchors`` anchors at a time: on a CPU, a block
    whose temporaries stay in its caches (128 K pairs: 512 KB of float32), on an
    accelerator 16 M pairs."""
    pairs = 1 << 17 if torch.device(device).type == "cpu" else 1 << 24
    return max(1, pairs // max(1, num_anchors))


def _distinct_spans(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct (lo, hi) intervals, ``Tensor[S, 2]``, and the one of each input,
    ``Tensor[N]`` int64. Only float32 intervals are merged (as one 64-bit word each);
    others are all kept."""
    spans = torch.stack((lo, hi), dim=1)  # (N, 2)
    if spans.dtype != torch.float32:
        return spans, torch.arange(len(spans), device=spans.device)
    distinct, index = spans.view(torch.int64)[:, 0].unique(return_inverse=True)
    return distinct.view(torch.float32).view(-1, 2), index


def _overlap(lo1: Tensor, hi1: Tensor, lo2: Tensor, hi2: Tensor) -> Tensor:
    """Length of the intersection of [lo1, hi1] and [lo2, hi2], broadcast; 0 if none."""
    return torch.minimum(hi1, hi2).sub_(torch.maximum(lo1, lo2)).clamp_(min=0)


def _iou(inter: Tensor, area1: Tensor, area2: Tensor) -> Tensor:
    """``inter / (area1 + area2 - inter)`` (written into ``inter``), a zero union made
    tiny so that boxes without area give 0, not NaN."""
    union = (area1 + area2).sub_(inter)
    return inter.div_(union.clamp_(min=torch.finfo(union.dtype).tiny))


def encode_offsets(anchors: Tensor, boxes: Tensor, eps: float = 1e-6) -> Tensor:
    """Offsets that move each anchor onto its box (the chapter's ``offset_boxes``).

    ``10 * (c_box - c_anchor) / wh_anchor`` and ``5 * log(eps + wh_box / wh_anchor)``.
    ``decode_offsets(anchors, encode_offsets(anchors, boxes)) == boxes`` up to
    ``eps * wh_anchor`` and float rounding, unless the decode clamp applies.

    Args:
        anchors (Tensor[..., 4]), boxes (Tensor[..., 4]): xyxy, same shape.
    Returns:
        Tensor[..., 4]: (dx, dy, dw, dh).
    """
    a = box_corner_to_center(anchors)
    b = box_corner_to_center(boxes)
    dxy = _XY_SCALE * (b[..., :2] - a[..., :2]) / a[..., 2:]
    dwh = _WH_SCALE * torch.log(eps + b[..., 2:] / a[..., 2:])
    return torch.cat((dxy, dwh), dim=-1)


def decode_offsets(anchors: Tensor, offsets: Tensor) -> Tensor:
    """Boxes predicted by offsets from anchors (the chapter's ``offset_inverse``).

    The log-size offset is clamped at log(1000/16) before ``exp`` so a wild
    prediction cannot overflow to inf.

    Args:
        anchors (Tensor[..., 4]): xyxy.
        offsets (Tensor[..., 4]): (dx, dy, dw, dh), broadcastable with anchors.
    Returns:
        Tensor[..., 4]: xyxy.
    """
    a = box_corner_to_center(anchors)
    cxy = offsets[..., :2] * a[..., 2:] / _XY_SCALE + a[..., :2]
    wh = torch.exp((offsets[..., 2:] / _WH_SCALE).clamp(max=MAX_LOG_SCALE)) * a[..., 2:]
    return box_center_to_corner(torch.cat((cxy, wh), dim=-1))


def scale_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Normalised -> pixels: the one conversion from [0, 1] to an image's pixels.

    Args:
        boxes (Tensor[..., 4]): xyxy normalised to [0, 1].
        size: the image's (height, width).
    Returns:
        Tensor[..., 4]: xyxy in pixels, ``boxes * (W, H, W, H)``.
    """
    height, width = size
    return boxes * boxes.new_tensor([width, height, width, height])


def normalise_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Pixels -> normalised, the inverse of :func:`scale_boxes`:
    ``normalise_boxes(scale_boxes(boxes, size), size) == boxes`` up to float rounding.

    Args:
        boxes (Tensor[..., 4]): xyxy in the pixels of an image of ``size``.
        size: the image's (height, width).
    Returns:
        Tensor[..., 4]: xyxy normalised, ``boxes / (W, H, W, H)``.
    """
    height, width = size
    return boxes / boxes.new_tensor([width, height, width, height])


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of each box with the box at the same index (``box_iou``'s diagonal).

    Args:
        boxes1 (Tensor[N, 4]), boxes2 (Tensor[N, 4]): xyxy.
    Returns:
        Tensor[N]: in [0, 1].
    """
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=1)
    union = area1 + area2 - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)
