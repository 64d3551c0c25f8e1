"""Anchor labelling: which ground-truth box each anchor learns (``anchor_targets``;
the chapter's ``multibox_target``).

Both assigners visit every (box, anchor) pair once, a block of boxes at a time
(``boxes.block_rows``), and keep only what they need of each block, so that a
crowd of hundreds of boxes per image costs about one IoU table, and no table of
a batch's B x M x A pairs is ever held.
"""

from __future__ import annotations

import heapq

import torch
from torch import Tensor

from .anchors import grid_levels
from .boxes import anchor_iou_blocks, block_rows, encode_offsets, paired_box_iou
from .options import ASSIGNERS

# The greedy step keeps each box's best anchors from the IoU pass (_CANDIDATES), and
# sorts the first _HEAD of them for all boxes at once; the rest are reached one by one.
_CANDIDATES = 32
_HEAD = 4
_LOW32 = (1 << 32) - 1

# ATSS's candidates per box on each map. The paper's k = 9 counts locations of one
# anchor each; tinyssd's maps have up to 6 anchors a cell, so 9 anchors were a cell and
# a half. BCCD val, the default recipe otherwise unchanged: AP 0.488 / 0.508 / 0.497 /
# 0.498 and AP75 0.488 / 0.540 / 0.533 / 0.530 with 9 / 18 / 36 / 54.
ATSS_TOPK = 18


def match_anchors(
    anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, iou_threshold: float = 0.5
) -> Tensor:
    """Assign ground-truth boxes to anchors, for a whole batch at once.

    1. Every anchor whose best IoU is >= ``iou_threshold`` takes that box.
    2. Every box takes one anchor of its own, greedily: the largest remaining
       IoU pairs an anchor with a box and removes both, ties going to the lower
       anchor, then the lower box index (the chapter's loop, argmax order).

    Padding boxes (``gt_valid`` False) never take an anchor. IoUs are compared as
    float32, the anchors' dtype in tinyssd (float64 IoUs are rounded to it).

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
    batch, num_gt = gt_valid.shape
    num_anchors = len(anchors)
    if num_gt == 0:  # no boxes at all in the batch: all background
        return torch.full((batch, num_anchors), -1, device=anchors.device)
    img, slot = gt_valid.nonzero(as_tuple=True)  # (N,) each: the real boxes, image by image
    boxes = gt_boxes[img, slot]  # (N, 4)
    # step 1: each anchor's best box per image, as a key (IoU bits, then the lower box)
    best = torch.full((batch, num_anchors), -1, dtype=torch.long, device=anchors.device)
    # step 2: each box's best anchors, as keys (IoU bits, then the lower anchor)
    ranked = torch.empty(
        (len(img), min(num_gt, num_anchors, _CANDIDATES)), dtype=torch.long, device=anchors.device
    )
    for rows, iou in anchor_iou_blocks(anchors, boxes):
        high = _iou_bits(iou)  # (n, A)
        ranked[rows] = _anchor_keys(high).topk(ranked.shape[1], dim=1).values
        box_keys = high.bitwise_or_((_LOW32 - slot[rows])[:, None])
        best.scatter_reduce_(0, img[rows, None].expand_as(box_keys), box_keys, "amax")
    best_iou = (best >> 32).int().view(torch.float32)  # (B, A); where best < 0: no box
    matched = torch.where((best >= 0) & (best_iou >= iou_threshold), _LOW32 - (best & _LOW32), -1)
    pair_rows, pair_anchors = _greedy_pairs(anchors, boxes, img, ranked)
    matched[img[pair_rows], pair_anchors] = slot[pair_rows]
    return matched


def _iou_bits(iou: Tensor) -> Tensor:
    """IoUs as int64 whose high 32 bits are the float32 bit pattern, low 32 bits 0: the
    keys' high half, ordered as the values for an IoU >= 0 (-0.0 is made 0.0), negative
    for -inf (an anchor already taken). ``Tensor[...]`` -> ``Tensor[...]`` int64."""
    return (iou.float() + 0.0).view(torch.int32).long().bitwise_left_shift_(32)


def _anchor_keys(high: Tensor) -> Tensor:
    """Keys that order a box's anchors as the chapter's loop does, IoU descending, then
    the lower anchor first: ``_iou_bits`` | (A - 1 - anchor).

    Args:
        high (Tensor[..., A] int64): ``_iou_bits`` of a box's IoUs with the A anchors.
    Returns:
        Tensor[..., A] int64.
    """
    return high | torch.arange(high.shape[-1] - 1, -1, -1, device=high.device)


def _greedy_pairs(
    anchors: Tensor, boxes: Tensor, img: Tensor, ranked: Tensor
) -> tuple[Tensor, Tensor]:
    """Step 2 of ``match_anchors``: the chapter's greedy loop, in one pass over the pairs.

    Taking the largest remaining IoU and removing its anchor and box, again and
    again, is visiting every pair in that argmax order (IoU descending, then the
    lower anchor, then the lower box) and taking each pair whose anchor and box
    are both still free. A box's pairs beyond its k best matter only if others
    took all k first, so the pass merges the boxes' k best: the first ``_HEAD``
    of every box sorted at once, each next one pushed on a heap when its box
    reaches it, and a box whose k anchors all went to others gets its next best
    free anchors then (``_next_anchors``). Images do not interact: each has its
    own range of anchor ids.

    Args:
        anchors (Tensor[A, 4]): normalised xyxy.
        boxes (Tensor[N, 4]): the real boxes, image by image.
        img (Tensor[N] int64): each box's image.
        ranked (Tensor[N, k] int64): each box's k best ``_anchor_keys``, descending.
    Returns:
        (row, anchor) index tensors of the pairs, at most one per box.
    """
    num_rows, k = ranked.shape
    num_anchors = len(anchors)
    head = min(k, _HEAD)
    keys = ranked[:, :head].flatten()
    order = keys.sort(descending=True, stable=True).indices  # equal keys: the lower box first
    stream = zip(keys[order].tolist(), (order // head).tolist(), (order % head).tolist())
    ranked = ranked.cpu()
    first_id = (img * num_anchors).tolist()  # image b's anchors have ids b*A ... b*A + A - 1
    taken = bytearray(first_id[-1] + num_anchors if num_rows else 0)
    won = [-1] * num_rows  # each row's anchor id
    lists: dict[int, tuple[list[int], bool]] = {}  # a row past its head: its keys, all free?
    heap: list[tuple[int, int, int]] = []  # (-key, row, position in the row's list)

    def visit(key: int, row: int, pos: int) -> None:
        if won[row] >= 0:
            return
        anchor = first_id[row] + num_anchors - 1 - (key & _LOW32)
        if not taken[anchor]:
            taken[anchor], won[row] = 1, anchor
            return
        if row not in lists:
            if pos + 1 < head:  # its next pair is in the stream
                return
            lists[row] = ranked[row].tolist(), k >= num_anchors
        row_keys, every_free = lists[row]
        if pos + 1 < len(row_keys):
            heapq.heappush(heap, (-row_keys[pos + 1], row, pos + 1))
        elif not every_free:  # all its candidates went to other boxes: its next best
            start = first_id[row]
            taken_here = torch.frombuffer(taken, dtype=torch.bool)[start : start + num_anchors]
            more = 4 * len(row_keys)
            lists[row] = _next_anchors(anchors, boxes[row], taken_here.to(anchors.device), more)
            if lists[row][0]:
                heapq.heappush(heap, (-lists[row][0][0], row, 0))

    for key, row, pos in stream:
        while heap and heap[0] < (-key, row):
            neg_key, r, p = heapq.heappop(heap)
            visit(-neg_key, r, p)
        visit(key, row, pos)
    while heap:
        neg_key, r, p = heapq.heappop(heap)
        visit(-neg_key, r, p)
    rows = [row for row, anchor in enumerate(won) if anchor >= 0]
    ids = torch.tensor([won[row] for row in rows], dtype=torch.long, device=img.device)
    return torch.tensor(rows, dtype=torch.long, device=img.device), ids % num_anchors


def _next_anchors(
    anchors: Tensor, box: Tensor, taken: Tensor, count: int
) -> tuple[list[int], bool]:
    """A box's best ``count`` anchors among those not ``taken``.

    Args:
        anchors (Tensor[A, 4]), box (Tensor[4]): normalised xyxy.
        taken (Tensor[A] bool).
    Returns:
        Their ``_anchor_keys``, descending, and whether they are all the free anchors.
    """
    free = len(taken) - int(taken.sum())
    count = min(count, free)
    iou = paired_box_iou(anchors, box).masked_fill_(taken, -torch.inf)  # (A,)
    return _anchor_keys(_iou_bits(iou)).topk(count).values.tolist(), count == free


def atss_match(
    anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, topk: int = ATSS_TOPK
) -> Tensor:
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
    img, slot = gt_valid.nonzero(as_tuple=True)  # (N,) each: the real boxes
    a_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
    g_ctr = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, M, 2)
    near = _nearest_anchors(a_ctr, g_ctr[img, slot], grid_levels(anchors), topk)  # (N, K)
    # candidates and their IoUs per (image, box slot); a padding row: anchor 0, IoU -1
    cand = torch.zeros((batch, num_gt, near.shape[1]), dtype=torch.long, device=anchors.device)
    cand[img, slot] = near
    near_iou = paired_box_iou(anchors[near], gt_boxes[img, slot, None])  # (N, K)
    cand_iou = near_iou.new_full(cand.shape, -1.0)  # (B, M, K)
    cand_iou[img, slot] = near_iou
    threshold = cand_iou.mean(dim=-1, keepdim=True) + cand_iou.std(dim=-1, keepdim=True)
    ctr = a_ctr[cand]  # (B, M, K, 2)
    inside = (ctr > gt_boxes[..., None, :2]).all(-1) & (ctr < gt_boxes[..., None, 2:]).all(-1)
    positive = (cand_iou >= threshold) & inside & gt_valid[..., None]  # (B, M, K)
    matched = _most_overlapped(cand, cand_iou, positive, num_anchors)
    # a box with no positive (or whose positives all went to other boxes) takes its best anchor
    has_anchor = torch.zeros_like(gt_valid)
    img, anchor = (matched >= 0).nonzero(as_tuple=True)
    has_anchor[img, matched[img, anchor]] = True
    lonely_img, lonely_gt = (gt_valid & ~has_anchor).nonzero(as_tuple=True)
    for rows, iou in anchor_iou_blocks(anchors, gt_boxes[lonely_img, lonely_gt]):
        matched[lonely_img[rows], iou.argmax(dim=-1)] = lonely_gt[rows]
    return matched


def _nearest_anchors(a_ctr: Tensor, g_ctr: Tensor, levels: list[int], topk: int) -> Tensor:
    """On every map, the ``topk`` anchors whose centres are nearest each box's centre.

    Args:
        a_ctr (Tensor[A, 2]): anchor centres, map after map (``levels`` anchors each).
        g_ctr (Tensor[N, 2]): box centres.
    Returns:
        Tensor[N, K] int64: anchor indices, K = sum of min(topk, count) over the maps.
    """
    width = sum(min(topk, count) for count in levels)
    out = torch.empty((len(g_ctr), width), dtype=torch.long, device=a_ctr.device)
    step = block_rows(len(a_ctr), a_ctr.device)
    for start in range(0, len(g_ctr), step):
        g = g_ctr[start : start + step, None]  # (n, 1, 2)
        # squared distance dx^2 + dy^2, as the chapter's (g - a).square().sum(-1), bit for bit
        dist = (g[..., 0] - a_ctr[:, 0]).square_().add_((g[..., 1] - a_ctr[:, 1]).square_())
        near, first = [], 0
        for count in levels:
            k = min(topk, count)
            near.append(
                dist[:, first : first + count].topk(k, dim=-1, largest=False).indices + first
            )
            first += count
        out[start : start + step] = torch.cat(near, dim=-1)
    return out


def _most_overlapped(cand: Tensor, cand_iou: Tensor, positive: Tensor, num_anchors: int) -> Tensor:
    """Each anchor's box among those it is positive for: the largest IoU, the lower
    box of equals (a max over boxes of the positive IoUs, on the positives only).

    Args:
        cand (Tensor[B, M, K] int64), cand_iou (Tensor[B, M, K]), positive (Tensor[B, M, K] bool).
    Returns:
        Tensor[B, A] int64: the box index, -1 where no box.
    """
    batch = cand.shape[0]
    img, box, k = positive.nonzero(as_tuple=True)  # (P,) each
    cell = img * num_anchors + cand[img, box, k]  # (P,): image b's anchor a is b*A + a
    value = cand_iou[img, box, k]
    best = cand_iou.new_full((batch * num_anchors,), -1.0).scatter_reduce_(0, cell, value, "amax")
    first = value == best[cell]
    best_gt = torch.zeros(batch * num_anchors, dtype=torch.long, device=cand.device)
    best_gt.scatter_reduce_(0, cell[first], box[first], "amin", include_self=False)
    return torch.where(best >= 0, best_gt, -1).view(batch, num_anchors)


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
        matched = atss_match(anchors, gt_boxes, gt_class > 0, topk=ATSS_TOPK)  # (B, A)
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
