"""Anchor labelling: which ground-truth box each anchor learns (``anchor_targets``;
the chapter's ``multibox_target``)."""

from __future__ import annotations

import torch
from torch import Tensor

from .anchors import grid_levels
from .boxes import batched_box_iou, encode_offsets
from .options import ASSIGNERS


def match_anchors(
    anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, iou_threshold: float = 0.5
) -> Tensor:
    """Assign ground-truth boxes to anchors, for a whole batch at once.

    1. Every anchor whose best IoU is >= ``iou_threshold`` takes that box.
    2. Every box takes one anchor of its own, greedily: the largest remaining
       IoU pairs an anchor with a box and removes both, ties going to the lower
       anchor, then the lower box index (the chapter's loop, argmax order).

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
    rows, anchors_won, boxes = _greedy_pairs(iou, gt_valid)
    matched[rows, anchors_won] = boxes
    return matched


def atss_match(anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, topk: int = 9) -> Tensor:
    """Adaptive Training Sample Selection (Zhang et al., 2020), for a whole batch at once.

    Per box: on every feature map, the ``topk`` anchors whose centres are nearest the
    box's centre are candidates; the box's IoU threshold is the mean + standard
    deviation of its candidates' IoUs, so a small box whose anchors all overlap it
    little still gets its best ones, and a large box only its tight ones. A
    candidate whose IoU reaches the threshold and whose centre lies inside the box
    is positive; an anchor positive for several boxes takes the one it overlaps
    most. A box left without a positive takes its best-IoU anchor (the chapter's
    rule 2), so no object goes unlearnt.

    Example (one map of 4 anchors, topk 3; one box whose centre is nearest anchors
    0, 1, 2 with IoUs 0.7, 0.3, 0.0 and inside anchors 0 and 1)::

        candidates 0, 1, 2: mean 0.33, std 0.35 -> threshold 0.68
        matched = [0, -1, -1, -1]   (anchor 1: 0.3 < 0.68; anchor 3 is no candidate)

    Args:
        anchors (Tensor[A, 4]): normalised xyxy, in ``AnchorGenerator``'s order.
        gt_boxes (Tensor[B, M, 4]): normalised xyxy.
        gt_valid (Tensor[B, M] bool): False for padding rows.
        topk: candidates per box on each map.
    Returns:
        Tensor[B, A] int64: the matched box index, -1 for background.
    """
    batch, num_gt = gt_valid.shape
    num_anchors = len(anchors)
    if num_gt == 0:
        return torch.full((batch, num_anchors), -1, device=anchors.device)
    iou = batched_box_iou(anchors, gt_boxes)  # (B, M, A)
    iou = iou.masked_fill(~gt_valid[..., None], -1.0)
    a_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
    g_ctr = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, M, 2)
    dist = (g_ctr[..., None, :] - a_ctr).square().sum(-1)  # (B, M, A)
    candidates = []
    start = 0
    for count in grid_levels(anchors):
        k = min(topk, count)
        near = dist[..., start : start + count].topk(k, dim=-1, largest=False).indices
        candidates.append(near + start)
        start += count
    cand = torch.cat(candidates, dim=-1)  # (B, M, K)
    cand_iou = iou.gather(2, cand)
    threshold = cand_iou.mean(dim=-1, keepdim=True) + cand_iou.std(dim=-1, keepdim=True)
    ctr = a_ctr[cand]  # (B, M, K, 2)
    inside = (ctr > gt_boxes[..., None, :2]).all(-1) & (ctr < gt_boxes[..., None, 2:]).all(-1)
    positive = (cand_iou >= threshold) & inside & gt_valid[..., None]  # (B, M, K)
    chosen = torch.full_like(iou, -1.0)  # (B, M, A): IoU where positive
    chosen.scatter_(2, cand, torch.where(positive, cand_iou, -1.0))
    best_iou, best_gt = chosen.max(dim=1)  # (B, A)
    matched = torch.where(best_iou >= 0, best_gt, -1)
    # a box with no positive (or whose positives all went to other boxes) takes its best anchor
    has_anchor = torch.zeros_like(gt_valid)
    img, anchor = (matched >= 0).nonzero(as_tuple=True)
    has_anchor[img, matched[img, anchor]] = True
    lonely_img, lonely_gt = (gt_valid & ~has_anchor).nonzero(as_tuple=True)
    matched[lonely_img, iou[lonely_img, lonely_gt].argmax(dim=-1)] = lonely_gt
    return matched


def _greedy_pairs(iou: Tensor, gt_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Step 2 of ``match_anchors``: the chapter's greedy loop, on a few candidates.

    When a box is paired, at most M - 1 anchors have been taken by other boxes,
    so its anchor is among its own M best (IoU descending, lower index first on
    ties). The loop therefore runs exactly on a (B, M, M) table of those
    candidates instead of the (B, M, A) IoU table, one box per image a round.

    Args:
        iou (Tensor[B, M, A]), gt_valid (Tensor[B, M] bool).
    Returns:
        (image, anchor, box) index tensors of the pairs, one per real box.
    """
    batch, num_gt, _ = iou.shape
    cand_iou, cand_anchor = _best_anchors(iou, gt_valid, num_gt)  # (B, M, k) each
    k = cand_iou.shape[2]
    table = cand_iou.masked_fill(~gt_valid[..., None], -torch.inf)
    # argmax order of the chapter's (A, M) table: lower anchor first, then lower box
    order = cand_anchor * num_gt + torch.arange(num_gt, device=iou.device)[:, None]
    no_pair = torch.iinfo(order.dtype).max
    imgs = torch.arange(batch, device=iou.device)
    pairs = []
    for _ in range(int(gt_valid.sum(dim=1).max())):
        top = table.flatten(1).max(dim=1).values  # (B,)
        open_ = top > -torch.inf  # images with a box still to pair
        tied = torch.where(table == top[:, None, None], order, no_pair)
        pick = tied.flatten(1).argmin(dim=1)  # (B,)
        box, anchor = pick // k, cand_anchor.flatten(1).gather(1, pick[:, None])[:, 0]
        pairs.append(torch.stack((imgs, anchor, box))[:, open_])
        table[imgs, box] = -torch.inf  # the box is done
        table.masked_fill_(cand_anchor == anchor[:, None, None], -torch.inf)  # the anchor taken
    if not pairs:
        return (iou.new_zeros(0, dtype=torch.long),) * 3
    rows, anchors_won, boxes = torch.cat(pairs, dim=1)
    return rows, anchors_won, boxes


def _best_anchors(iou: Tensor, gt_valid: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each box's ``k`` best anchors, ties at the cut going to the lower anchor index.

    Returns:
        (Tensor[B, M, k'] IoU, Tensor[B, M, k'] anchor index), k' = min(k, A).
    """
    num_anchors = iou.shape[2]
    if k >= num_anchors:
        return iou, torch.arange(num_anchors, device=iou.device).expand_as(iou)
    values, index = iou.topk(k + 1, dim=2)  # (B, M, k+1), descending
    # where the k-th and (k+1)-th values tie, topk's choice among equals is arbitrary:
    # redo those rows exactly (all above the cut, then the lowest indices at it)
    tie = (values[..., k - 1] == values[..., k]) & gt_valid  # (B, M)
    values, index = values[..., :k].contiguous(), index[..., :k].contiguous()
    if tie.any():
        rows = iou[tie]  # (R, A)
        cut = values[tie][:, k - 1 : k]  # (R, 1)
        above, at = rows > cut, rows == cut
        need = k - above.sum(dim=1, keepdim=True)
        keep = above | (at & (at.cumsum(dim=1) <= need))  # exactly k per row
        fixed = keep.nonzero()[:, 1].view(-1, k)  # (R, k), ascending anchor index
        values[tie], index[tie] = rows.gather(1, fixed), fixed
    return values, index


def anchor_targets(
    anchors: Tensor, targets: Tensor, iou_threshold: float = 0.5, assigner: str = "max_iou"
) -> tuple[Tensor, Tensor, Tensor]:
    """What each anchor learns: box offsets, their mask and class.

    Args:
        anchors (Tensor[1, A, 4] or Tensor[A, 4]): normalised xyxy.
        targets (Tensor[B, M, 5]): rows (class 1..C, x1, y1, x2, y2), coordinates
            normalised; class 0 marks a padding row (``tinyssd.data.collate``'s rows).
        assigner: ``max_iou`` (the chapter's ``match_anchors`` at ``iou_threshold``)
            or ``atss`` (``atss_match``: a threshold per box from its candidates).
    Returns:
        box_targets (Tensor[B, 4A]): encoded offsets, 0 for background anchors.
        box_mask (Tensor[B, 4A]): 1.0 for the 4 values of a matched anchor, else 0.
        cls_targets (Tensor[B, A] int64): the matched box's class 1..C, 0 for background.
    """
    anchors = anchors.reshape(-1, 4)
    if targets.shape[1] == 0:  # no boxes in the batch: one padding row keeps the shapes simple
        targets = targets.new_zeros((targets.shape[0], 1, 5))
    gt_class, gt_boxes = targets[..., 0], targets[..., 1:]
    if assigner == "atss":
        matched = atss_match(anchors, gt_boxes, gt_class > 0)  # (B, A)
    elif assigner == "max_iou":
        matched = match_anchors(anchors, gt_boxes, gt_class > 0, iou_threshold)
    else:
        raise ValueError(f"assigner {assigner!r}: choose from {', '.join(ASSIGNERS)}")
    foreground = matched >= 0
    # encode only the few matched anchors (tens per image, of thousands) and scatter
    img, anchor = foreground.nonzero(as_tuple=True)  # (F,) each
    gt = matched[img, anchor]
    batch, num_anchors = matched.shape
    offsets = anchors.new_zeros(batch, num_anchors, 4)
    offsets[img, anchor] = encode_offsets(anchors[anchor], gt_boxes[img, gt])
    cls_targets = torch.zeros_like(matched)
    cls_targets[img, anchor] = gt_class[img, gt].long()
    mask = foreground[..., None].to(anchors.dtype).expand(-1, -1, 4)
    return offsets.reshape(batch, -1), mask.reshape(batch, -1), cls_targets


def chapter_rows(targets: Tensor) -> Tensor:
    """``anchor_targets``' rows (class 1..C, 0 = padding) as the chapter's label rows
    (class 0..C-1, -1 = padding): ``Tensor[B, M, 5]`` -> ``Tensor[B, M, 5]``."""
    rows = targets.clone()
    rows[..., 0] -= 1
    return rows


def multibox_target(
    anchors: Tensor, labels: Tensor, iou_threshold: float = 0.5
) -> tuple[Tensor, Tensor, Tensor]:
    """The chapter's targets: box offsets, their mask and class labels.

    The chapter's API over ``anchor_targets``, which takes classes 1..C.

    Args:
        anchors (Tensor[1, A, 4] or Tensor[A, 4]): normalised xyxy.
        labels (Tensor[B, M, 5]): rows (class, x1, y1, x2, y2), class 0..C-1,
            coordinates normalised; class -1 marks a padding row.
    Returns:
        bbox_offset (Tensor[B, 4A]): encoded offsets, 0 for background anchors.
        bbox_mask (Tensor[B, 4A]): 1.0 for the 4 values of a matched anchor, else 0.
        class_labels (Tensor[B, A] int64): matched class + 1, 0 for background.
    """
    targets = labels.clone()
    targets[..., 0] = (labels[..., 0] + 1).clamp(min=0)  # 1..C; every padding class -> 0
    return anchor_targets(anchors, targets, iou_threshold)
