"""COCO box metrics with pycocotools' exact semantics, vectorised over images.

pycocotools (``COCOeval(gt, dt, "bbox")``) walks every (image, class) group in
Python. Here the IoU of every detection with every ground-truth box of its
group is computed in one go, and the greedy matching advances one score rank
at a time for all groups, area ranges and IoU thresholds together.

What is kept from pycocotools, exactly (each point is tested against it):
- IoU of xywh boxes as its ``bbIou`` computes it; a crowd box's "IoU" is the
  intersection over the detection's area. Areas are box ``w * h`` for both
  ground truth and detections (pycocotools reads the annotation ``area``).
- Per (image, class), detections sorted by score with a stable sort and cut to
  the best 100; each takes the unmatched ground truth of highest IoU >= t
  (ties: the later box), regular boxes before ignored ones (crowd, or outside
  the area range). Crowd boxes can be matched many times. Detections matched
  to an ignored box, or unmatched and outside the area range, are ignored.
- Precision made monotone, read at 101 recall points; -1 where a class has no
  ground truth in a setting, and means over classes skip the -1 entries.

The flattening of the per-image dicts and the pairwise IoU also serve the VOC
metric (``voc.py``), which uses the same continuous IoU (no +1 pixel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# pycocotools' Params.setDetParams, verbatim, so that thresholds compare bit for bit.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
# all, small, medium, large; both ends inclusive, as in pycocotools.
AREA_RANGES = np.array([[0, 1e5**2], [0, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=float)
# Cells (groups x ranks x (boxes + A*T)) of one block of the matching: bounds its memory.
_BLOCK_CELLS = 1 << 22


@dataclass(frozen=True)
class EvalInputs:
    """Every image's detections and ground truth, flattened image by image.

    D detections, G ground-truth boxes in all; boxes are xywh float64 in pixels.
    """

    dt_image: np.ndarray  # (D,) int64, image index
    dt_label: np.ndarray  # (D,) int64, class 1..C
    dt_score: np.ndarray  # (D,) float64
    dt_xywh: np.ndarray  # (D, 4) float64
    gt_image: np.ndarray  # (G,) int64
    gt_label: np.ndarray  # (G,) int64
    gt_xywh: np.ndarray  # (G, 4) float64
    gt_crowd: np.ndarray  # (G,) bool, COCO crowd region
    gt_difficult: np.ndarray  # (G,) bool, VOC "difficult"

    @property
    def labels(self) -> np.ndarray:
        """Sorted classes that have a ground-truth box or a detection."""
        return np.union1d(self.gt_label, self.dt_label)

    def groups(self) -> tuple[np.ndarray, np.ndarray]:
        """(image, class) group key of every detection (D,) and ground-truth box (G,)."""
        stride = int(self.labels.max()) + 1 if self.labels.size else 1
        return self.dt_image * stride + self.dt_label, self.gt_image * stride + self.gt_label


_NO_BOXES = {
    "dt_image": np.zeros(0, np.int64),
    "dt_label": np.zeros(0, np.int64),
    "dt_score": np.zeros(0),
    "dt_xywh": np.zeros((0, 4)),
    "gt_image": np.zeros(0, np.int64),
    "gt_label": np.zeros(0, np.int64),
    "gt_xywh": np.zeros((0, 4)),
    "gt_crowd": np.zeros(0, bool),
    "gt_difficult": np.zeros(0, bool),
}


def _array(value, dtype, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype).reshape(shape)


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def flatten_inputs(
    predictions: Sequence[Mapping[str, object]], targets: Sequence[Mapping[str, object]]
) -> EvalInputs:
    """Per-image dicts (torchmetrics' layout, xyxy pixels) -> one ``EvalInputs``.

    ``predictions[i]``: ``boxes`` (K, 4), ``scores`` (K,), ``labels`` (K,);
    ``targets[i]``: ``boxes`` (M, 4), ``labels`` (M,), optional ``iscrowd`` and
    ``difficult`` (M,). Tensors or arrays.
    """
    if len(predictions) != len(targets):
        raise ValueError(
            f"{len(predictions)} prediction dicts for {len(targets)} target dicts: "
            "give one of each per image, in the same order"
        )
    parts = {k: [empty] for k, empty in _NO_BOXES.items()}  # dtypes and shapes when empty
    for i, (pred, target) in enumerate(zip(predictions, targets)):
        boxes = _array(pred["boxes"], np.float64, (-1, 4))
        scores = _array(pred["scores"], np.float64, (-1,))
        labels = _array(pred["labels"], np.int64, (-1,))
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"predictions[{i}]: {len(boxes)} boxes, {len(scores)} scores, "
                f"{len(labels)} labels; they must be equal"
            )
        gt_boxes = _array(target["boxes"], np.float64, (-1, 4))
        gt_labels = _array(target["labels"], np.int64, (-1,))
        n = len(gt_boxes)
        crowd = _array(target.get("iscrowd", np.zeros(n)), bool, (-1,))
        difficult = _array(target.get("difficult", np.zeros(n)), bool, (-1,))
        if not n == len(gt_labels) == len(crowd) == len(difficult):
            raise ValueError(
                f"targets[{i}]: {n} boxes, {len(gt_labels)} labels, {len(crowd)} iscrowd, "
                f"{len(difficult)} difficult; they must be equal"
            )
        parts["dt_image"].append(np.full(len(boxes), i, np.int64))
        parts["dt_label"].append(labels)
        parts["dt_score"].append(scores)
        parts["dt_xywh"].append(_xyxy_to_xywh(boxes))
        parts["gt_image"].append(np.full(n, i, np.int64))
        parts["gt_label"].append(gt_labels)
        parts["gt_xywh"].append(_xyxy_to_xywh(gt_boxes))
        parts["gt_crowd"].append(crowd)
        parts["gt_difficult"].append(difficult)
    return EvalInputs(**{k: np.concatenate(v) for k, v in parts.items()})


def same_group_pairs(dt_group: np.ndarray, gt_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, ground truth) pair that shares a group key.

    Args:
        dt_group (D,), gt_group (G,): integer keys, e.g. (image, class).
    Returns:
        det (P,), gt (P,): indices, ordered by detection, then by ground truth.
    """
    gt_order = np.argsort(gt_group, kind="stable")
    sorted_groups = gt_group[gt_order]
    start = np.searchsorted(sorted_groups, dt_group, "left")
    counts = np.searchsorted(sorted_groups, dt_group, "right") - start
    det = np.repeat(np.arange(len(dt_group)), counts)
    offset = np.arange(len(det)) - np.repeat(np.cumsum(counts) - counts, counts)
    return det, gt_order[np.repeat(start, counts) + offset]


def pair_iou(dt_xywh: np.ndarray, gt_xywh: np.ndarray, crowd: np.ndarray | bool) -> np.ndarray:
    """IoU of matching rows, in the arithmetic of pycocotools' ``bbIou``.

    Args:
        dt_xywh (P, 4), gt_xywh (P, 4): float64 boxes; crowd (P,) or bool.
    Returns:
        (P,): intersection over union, or over the detection's area where crowd;
        0 where the boxes do not overlap.
    """
    dx, dy, dw, dh = dt_xywh.T
    gx, gy, gw, gh = gt_xywh.T
    iw = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    ih = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = iw * ih
    det_area = dw * dh
    union = np.where(crowd, det_area, det_area + gw * gh - inter)
    overlap = (iw > 0) & (ih > 0)
    return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def rank_in_group(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(D,) rank of each detection by descending score within its group (ties: input order)."""
    order = np.lexsort((np.arange(len(group)), -score, group))
    sorted_group = group[order]
    is_first = np.r_[True, sorted_group[1:] != sorted_group[:-1]]
    group_start = np.maximum.accumulate(np.where(is_first, np.arange(len(group)), 0))
    rank = np.empty(len(group), np.int64)
    rank[order] = np.arange(len(group)) - group_start
    return rank


def _dense_index(keys: np.ndarray, order_in_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each item within its key (ordered by order_in_key), and the key's id.

    Args:
        keys (N,), order_in_key (N,): integers.
    Returns:
        position (N,), key_id (N,): key ids number the distinct keys in sorted order.
    """
    order = np.lexsort((order_in_key, keys))
    sorted_keys = keys[order]
    is_first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    key_id = np.empty(len(keys), np.int64)
    key_id[order] = np.cumsum(is_first) - 1
    position = np.empty(len(keys), np.int64)
    position[order] = np.arange(len(keys)) - np.flatnonzero(is_first)[key_id[order]]
    return position, key_id


def _blocks(depths: np.ndarray, widths: np.ndarray, cells: int) -> list[tuple[int, int]]:
    """Split groups (depths descending) into runs of at most ``_BLOCK_CELLS`` padded cells."""
    blocks, start, width = [], 0, 0
    for stop in range(len(depths)):
        width = max(width, int(widths[stop]))
        if (
            stop > start
            and (stop - start + 1) * int(depths[start]) * (width + cells) > _BLOCK_CELLS
        ):
            blocks.append((start, stop))
            start, width = stop, int(widths[stop])
    blocks.append((start, len(depths)))
    return blocks


def greedy_match(
    det: np.ndarray,
    gt: np.ndarray,
    iou: np.ndarray,
    dt_group: np.ndarray,
    dt_rank: np.ndarray,
    gt_group: np.ndarray,
    gt_ignore: np.ndarray,
    gt_crowd: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' ``evaluateImg`` matching, for all groups at once.

    Args:
        det, gt, iou (P,): the pairs with IoU >= the lowest threshold (no other
            pair can match), detection and ground truth of the same group.
        dt_group (D,), dt_rank (D,): each detection's group and score rank in it.
        gt_group (G,); gt_ignore (A, G) bool: crowd or outside area range a;
            gt_crowd (G,) bool.
    Returns:
        dets (N,): the detections in some pair (the others match nothing);
        matched (N, A, T) int64: their ground truth per area range and IoU
        threshold, -1 where unmatched.

    Example, one threshold: detections ranked 0 and 1 and boxes g0, g1 with
    IoU [[0.6, 0.7], [0.8, 0.0]]: rank 0 takes g1 (higher IoU), rank 1 takes g0.
    Had g1 been a crowd box, rank 0 would take g0 (regular boxes first) and
    rank 1 would find g0 taken and stay unmatched.
    """
    cand_dets, pair_det = np.unique(det, return_inverse=True)
    settings = (gt_ignore.shape[0], len(IOU_THRESHOLDS))
    matched = np.full((len(cand_dets), *settings), -1, np.int64)
    if not len(det):
        return cand_dets, matched
    cand_gts, pair_gt = np.unique(gt, return_inverse=True)
    # Every candidate group has candidate detections and boxes, so the ids agree.
    row, det_group_id = _dense_index(dt_group[cand_dets], dt_rank[cand_dets])
    col, gt_group_id = _dense_index(gt_group[cand_gts], cand_gts)
    depths = np.bincount(det_group_id)
    widths = np.bincount(gt_group_id, minlength=len(depths))
    by_depth = np.argsort(-depths, kind="stable")  # the groups still matching are a prefix
    slot = np.empty_like(by_depth)
    slot[by_depth] = np.arange(len(by_depth))
    det_slot, gt_slot = slot[det_group_id], slot[gt_group_id]
    pair_slot = det_slot[pair_det]
    pair_order = np.argsort(pair_slot, kind="stable")
    det_order = np.argsort(det_slot, kind="stable")
    gt_order = np.argsort(gt_slot, kind="stable")
    for start, stop in _blocks(depths[by_depth], widths[by_depth], settings[0] * settings[1]):
        n, depth, width = stop - start, depths[by_depth[start]], widths[by_depth[start:stop]].max()
        pairs = pair_order[slice(*np.searchsorted(pair_slot[pair_order], [start, stop]))]
        dets = det_order[slice(*np.searchsorted(det_slot[det_order], [start, stop]))]
        gts = gt_order[slice(*np.searchsorted(gt_slot[gt_order], [start, stop]))]
        ious = np.zeros((n, depth, width))  # padding never reaches a threshold
        ious[pair_slot[pairs] - start, row[pair_det[pairs]], col[pair_gt[pairs]]] = iou[pairs]
        gt_index = np.zeros((n, width), np.int64)
        gt_index[gt_slot[gts] - start, col[gts]] = cand_gts[gts]
        block = _match_block(
            ious,
            depths[by_depth[start:stop]],
            gt_ignore[:, gt_index].transpose(1, 0, 2),  # (A, n, W) -> (n, A, W)
            gt_crowd[gt_index],
        )
        det_in_block = det_slot[dets] - start
        cols = block[det_in_block, row[dets]]  # (d, A, T), -1 where unmatched
        matched[dets] = np.where(cols >= 0, gt_index[det_in_block[:, None, None], cols], -1)
    return cand_dets, matched


def _match_block(
    ious: np.ndarray, depths: np.ndarray, ignore: np.ndarray, crowd: np.ndarray
) -> np.ndarray:
    """Rank by rank greedy matching of one block of groups.

    Args:
        ious (n, R, W): group, detection rank, ground-truth column; depths (n,)
            ranks used per group, descending; ignore (n, A, W); crowd (n, W).
    Returns:
        (n, R, A, T) int32: matched column, or -1.
    """
    n, depth, width = ious.shape
    num_areas, thr = ignore.shape[1], IOU_THRESHOLDS[:, None]
    taken = np.zeros((n, num_areas, len(thr), width), bool)
    out = np.full((n, depth, num_areas, len(thr)), -1, np.int32)
    for r in range(depth):
        m = np.count_nonzero(depths > r)
        iou = ious[:m, r]  # (m, W)
        cand = (iou[:, None, :] >= thr)[:, None] & (~taken[:m] | crowd[:m, None, None, :])
        regular = cand & ~ignore[:m, :, None, :]  # (m, A, T, W)
        cand = np.where(regular.any(-1, keepdims=True), regular, cand)
        masked = np.where(cand, iou[:, None, None, :], -1.0)
        best = width - 1 - masked[..., ::-1].argmax(-1)  # the last of equal IoUs wins
        hit = cand.any(-1)  # (m, A, T)
        g, a, t = np.nonzero(hit)
        taken[g, a, t, best[g, a, t]] = True
        out[:m, r] = np.where(hit, best, -1)
    return out


def _interpolate(
    true_pos: np.ndarray, false_pos: np.ndarray, num_pos: int, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One class and range: precision and scores at the recall points, and final recall.

    Args:
        true_pos, false_pos (N, T) bool: detections in descending score order.
        num_pos: ground-truth boxes not ignored; scores (N,).
    Returns:
        precision (R, T), scores (R, T), recall (T,), in pycocotools' arithmetic.
    """
    tp = np.cumsum(true_pos, axis=0)
    fp = np.cumsum(false_pos, axis=0)
    rc = tp / num_pos
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1], axis=0)[::-1]  # the precision envelope
    precision = np.zeros((len(RECALL_THRESHOLDS), tp.shape[1]))
    at_scores = np.zeros_like(precision)
    for t in range(tp.shape[1]):
        at = np.searchsorted(rc[:, t], RECALL_THRESHOLDS, side="left")
        at = at[at < len(rc)]  # recall points never reached keep precision 0
        precision[: len(at), t] = pr[at, t]
        at_scores[: len(at), t] = scores[at]
    return precision, at_scores, rc[-1] if len(rc) else np.zeros(tp.shape[1])


def accumulate(
    dt_label: np.ndarray,
    dt_image: np.ndarray,
    dt_score: np.ndarray,
    dt_rank: np.ndarray,
    dt_matched: np.ndarray,
    dt_ignored: np.ndarray,
    gt_label: np.ndarray,
    gt_ignore: np.ndarray,
    labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pycocotools' ``accumulate``: precision and recall per threshold, class, range, maxDets.

    Args:
        dt_label, dt_image, dt_score, dt_rank (D,): the detections kept (rank
            by score within image and class < 100); dt_matched, dt_ignored
            (D, A, T) bool; gt_label (G,); gt_ignore (A, G) bool; labels (K,).
    Returns:
        precision (T, R, K, A, M), recall (T, K, A, M), scores (T, R, K, A, M):
        -1 where a class has no ground truth left in a range; ``scores`` is the
        score of the detection at which each recall point is reached.
    """
    num_thr, num_rec, num_areas = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES)
    shape = (num_thr, num_rec, len(labels), num_areas, len(MAX_DETS))
    precision, scores = -np.ones(shape), -np.ones(shape)
    recall = -np.ones((num_thr, len(labels), num_areas, len(MAX_DETS)))
    for k, label in enumerate(labels):
        dets = np.flatnonzero(dt_label == label)
        # pycocotools concatenates images in order, each sorted by score, then sorts stably.
        dets = dets[np.lexsort((dt_rank[dets], dt_image[dets], -dt_score[dets]))]
        matched, ignored, rank = dt_matched[dets], dt_ignored[dets], dt_rank[dets]
        of_class = gt_label == label
        for a in range(num_areas):
            num_pos = int(np.count_nonzero(of_class & ~gt_ignore[a]))
            if num_pos == 0:
                continue
            # A detection ignored at every threshold repeats the point before it
            # on every curve: dropping it leaves precision and recall unchanged.
            rows = np.flatnonzero(~ignored[:, a].all(axis=1))
            counted = ~ignored[rows, a]  # (n, T)
            true_pos = matched[rows, a] & counted
            false_pos = counted & ~true_pos
            for m, max_det in enumerate(MAX_DETS):
                keep = rank[rows] < max_det
                pr, sc, rc = _interpolate(
                    true_pos[keep], false_pos[keep], num_pos, dt_score[dets[rows[keep]]]
                )
                precision[:, :, k, a, m], scores[:, :, k, a, m] = pr.T, sc.T
                recall[:, k, a, m] = rc
    return precision, recall, scores


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """pycocotools' twelve ``stats``, in its order, from ``accumulate``'s arrays.

    Each is the mean over classes (and thresholds, recall points) of the entries
    that are not -1; -1 when there are none.
    """

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    all_, small, medium, large = range(len(AREA_RANGES))
    t50, t75 = 0, 5  # IOU_THRESHOLDS[5] is 0.75
    m1, m10, m100 = range(len(MAX_DETS))
    return {
        "AP": mean(precision[:, :, :, all_, m100]),
        "AP50": mean(precision[t50, :, :, all_, m100]),
        "AP75": mean(precision[t75, :, :, all_, m100]),
        "APs": mean(precision[:, :, :, small, m100]),
        "APm": mean(precision[:, :, :, medium, m100]),
        "APl": mean(precision[:, :, :, large, m100]),
        "AR1": mean(recall[:, :, all_, m1]),
        "AR10": mean(recall[:, :, all_, m10]),
        "AR100": mean(recall[:, :, all_, m100]),
        "ARs": mean(recall[:, :, small, m100]),
        "ARm": mean(recall[:, :, medium, m100]),
        "ARl": mean(recall[:, :, large, m100]),
    }


def coco_metrics(inputs: EvalInputs) -> dict[str, np.ndarray]:
    """COCOeval's ``evaluate`` + ``accumulate`` on flattened inputs.

    Returns:
        ``labels`` (K,) and ``accumulate``'s ``precision``, ``recall``, ``scores``
        (class axis in the order of ``labels``); ``summarize`` turns them into
        the twelve numbers.
    """
    dt_group, gt_group = inputs.groups()
    dt_rank = rank_in_group(dt_group, inputs.dt_score)
    top = np.flatnonzero(dt_rank < MAX_DETS[-1])
    dt_group, dt_rank, dt_xywh = dt_group[top], dt_rank[top], inputs.dt_xywh[top]
    lo, hi = AREA_RANGES[:, :1], AREA_RANGES[:, 1:]  # (A, 1)
    gt_area = inputs.gt_xywh[:, 2] * inputs.gt_xywh[:, 3]
    gt_ignore = inputs.gt_crowd | (gt_area < lo) | (gt_area > hi)  # (A, G)
    det, gt = same_group_pairs(dt_group, gt_group)
    iou = pair_iou(dt_xywh[det], inputs.gt_xywh[gt], inputs.gt_crowd[gt])
    near = iou >= IOU_THRESHOLDS[0]
    near_dets, match = greedy_match(
        det[near], gt[near], iou[near], dt_group, dt_rank, gt_group, gt_ignore, inputs.gt_crowd
    )  # (N, A, T)
    dt_area = dt_xywh[:, 2] * dt_xywh[:, 3]
    outside = ((dt_area < lo) | (dt_area > hi)).T  # (D, A)
    dt_matched = np.zeros((len(top), *match.shape[1:]), bool)
    dt_ignored = np.repeat(outside[:, :, None], len(IOU_THRESHOLDS), axis=2)
    d, a, t = np.nonzero(match >= 0)
    dt_matched[near_dets[d], a, t] = True
    dt_ignored[near_dets[d], a, t] = gt_ignore[a, match[d, a, t]]
    labels = inputs.labels
    precision, recall, scores = accumulate(
        inputs.dt_label[top],
        inputs.dt_image[top],
        inputs.dt_score[top],
        dt_rank,
        dt_matched,
        dt_ignored,
        inputs.gt_label,
        gt_ignore,
        labels,
    )
    return {"labels": labels, "precision": precision, "recall": recall, "scores": scores}
