"""Anchor labelling: which ground-truth box each anchor learns (``multibox_target``)."""

from __future__ import annotations

import torch
from torch import Tensor

from .boxes import batched_box_iou, encode_offsets

# IoU written into taken anchors / finished boxes so that they never win again;
# below any real IoU (>= 0) and below padding (-1).
_TAKEN = -2.0


def match_anchors(
    anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, iou_threshold: float = 0.5
) -> Tensor:
    """Assign ground-truth boxes to anchors, for a whole batch at once.

    1. Every anchor whose best IoU is >= ``iou_threshold`` takes that box.
    2. Every box takes one anchor of its own, greedily by the largest remaining
       IoU (the chapter's loop). Pairs that are each other's best among what
       remains are taken together in one round, which picks the same pairs as
       taking the global maximum one at a time; usually one or two rounds.

    Padding boxes (``gt_valid`` False) never take an anchor.

    Example (one image, 3 anchors x 2 boxes, threshold 0.5)::

        IoU = [[0.9, 0.0],     step 1: anchor 0 -> box 0 (0.9), anchor 1 -> box 0 (0.6)
               [0.6, 0.4],     step 2: box 0 takes anchor 0 (0.9); of what remains,
               [0.1, 0.3]]     box 1's best is anchor 1 (0.4), which it takes over
        matched = [0, 1, -1]   (the chapter's assign_anchor_to_bbox gives the same)

    Args:
        anchors (Tensor[A, 4]): normalised xyxy.
        gt_boxes (Tensor[B, M, 4]): normalised xyxy.
        gt_valid (Tensor[B, M] bool): False for padding rows.
    Returns:
        Tensor[B, A] int64: the matched box index, -1 for background.
    """
    if gt_boxes.shape[1] == 0:  # no boxes at all in the batch: all background
        return torch.full((gt_boxes.shape[0], len(anchors)), -1, device=anchors.device)
    # IoU only for real boxes (padding is often half the rows), scattered into
    # a padded (B, M, A) table whose padding rows hold -1.
    img, slot = gt_valid.nonzero(as_tuple=True)  # (N,) each
    iou = anchors.new_full((*gt_valid.shape, len(anchors)), -1.0)  # (B, M, A)
    iou[img, slot] = batched_box_iou(anchors, gt_boxes[img, slot][None])[0]  # (N, A)
    best_iou, best_gt = iou.max(dim=1)  # (B, A): each anchor's best box
    matched = torch.where(best_iou >= iou_threshold, best_gt, -1)

    batch, num_gt, num_anchors = iou.shape
    done = ~gt_valid  # (B, M)
    taken = torch.zeros(batch, num_anchors, dtype=torch.bool, device=iou.device)
    gt_index = torch.arange(num_gt, device=iou.device)
    imgs = torch.arange(batch, device=iou.device)  # images with boxes still open
    gt_of_anchor, work = best_gt, iou  # first round: nothing taken yet, reuse step 1
    for _ in range(num_gt):  # at most M rounds; normally one or two
        anchor_of_gt = work.max(dim=2).indices  # (b, M): best free anchor of each open box
        mutual = ~done[imgs] & (gt_of_anchor.gather(1, anchor_of_gt) == gt_index)  # (b, M)
        r, cols = mutual.nonzero(as_tuple=True)
        rows, anchors_won = imgs[r], anchor_of_gt[r, cols]
        matched[rows, anchors_won] = cols
        taken[rows, anchors_won] = True
        done[rows, cols] = True
        imgs = (~done).any(dim=1).nonzero()[:, 0]
        if len(imgs) == 0:
            break
        # later rounds only look at the few images that still have a conflict
        work = iou[imgs].masked_fill_(taken[imgs, None, :] | done[imgs, :, None], _TAKEN)
        gt_of_anchor = work.max(dim=1).indices  # (b, A): best open box of each free anchor
    return matched


def multibox_target(
    anchors: Tensor, labels: Tensor, iou_threshold: float = 0.5
) -> tuple[Tensor, Tensor, Tensor]:
    """The chapter's targets: box offsets, their mask and class labels.

    Args:
        anchors (Tensor[1, A, 4] or Tensor[A, 4]): normalised xyxy.
        labels (Tensor[B, M, 5]): rows (class, x1, y1, x2, y2), class 0..C-1,
            coordinates normalised; class -1 marks a padding row.
    Returns:
        bbox_offset (Tensor[B, 4A]): encoded offsets, 0 for background anchors.
        bbox_mask (Tensor[B, 4A]): 1.0 for the 4 values of a matched anchor, else 0.
        class_labels (Tensor[B, A] int64): matched class + 1, 0 for background.
    """
    anchors = anchors.reshape(-1, 4)
    if labels.shape[1] == 0:  # no boxes in the batch: one padding row keeps the shapes simple
        labels = labels.new_full((labels.shape[0], 1, 5), -1.0)
    gt_class, gt_boxes = labels[..., 0], labels[..., 1:]
    matched = match_anchors(anchors, gt_boxes, gt_class >= 0, iou_threshold)  # (B, A)
    foreground = matched >= 0
    # encode only the few matched anchors (tens per image, of thousands) and scatter
    img, anchor = foreground.nonzero(as_tuple=True)  # (F,) each
    gt = matched[img, anchor]
    batch, num_anchors = matched.shape
    offsets = anchors.new_zeros(batch, num_anchors, 4)
    offsets[img, anchor] = encode_offsets(anchors[anchor], gt_boxes[img, gt])
    class_labels = torch.zeros_like(matched)
    class_labels[img, anchor] = gt_class[img, gt].long() + 1
    mask = foreground[..., None].to(anchors.dtype).expand(-1, -1, 4)
    return offsets.reshape(batch, -1), mask.reshape(batch, -1), class_labels
