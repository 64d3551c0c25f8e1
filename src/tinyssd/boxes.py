"""Box maths: IoU, corner <-> centre conversion, offset encoding and decoding, scaling
between pixels and [0, 1].

Every function takes and returns plain tensors. Corner boxes are (x1, y1, x2, y2)
with x2 > x1, y2 > y1; centre boxes are (cx, cy, w, h).
"""

from __future__ import annotations

import math

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


def batched_box_iou(anchors: Tensor, boxes: Tensor) -> Tensor:
    """IoU of one set of anchors with each image's boxes.

    Same arithmetic as ``box_iou`` (so the same values, bit for bit), laid out
    with the anchors last because that is the long axis.

    Args:
        anchors (Tensor[A, 4]): xyxy.
        boxes (Tensor[B, M, 4]): xyxy, one set per image.
    Returns:
        Tensor[B, M, A]: IoU of box m of image b with anchor a.
    """
    ax1, ay1, ax2, ay2 = anchors.unbind(-1)  # (A,) each
    bx1, by1, bx2, by2 = (c[..., None] for c in boxes.unbind(-1))  # (B, M, 1) each
    iw = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)  # (B, M, A)
    ih = torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0)
    inter = iw.mul_(ih)
    union = ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1)) - inter
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
