"""From head outputs to detections: decode offsets, score, non-maximum suppression.

``multibox_detection`` is the chapter's function (rows for every anchor);
``postprocess_detections`` is the practical form (one dict per image, as
torchvision's detectors return), with thresholds, top-k and per-class NMS.
Their knobs are :class:`PostprocessConfig`'s, the one home of them for predict,
eval, video, serve and the ONNX export:

    post = resolve_postprocess(None, threshold=0.3)   # PostprocessConfig(score_threshold=0.3)
    dets = postprocess_detections(cls_logits, box_deltas, anchors, **asdict(post))
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from .boxes import decode_offsets, paired_box_iou, scale_boxes
from .options import DEFAULT_BOX_VOTE, EVAL_SCORE_THRESHOLD, PostprocessConfig

__all__ = [
    "EVAL_POSTPROCESS",
    "PostprocessConfig",
    "multibox_detection",
    "nms",
    "postprocess_detections",
    "resolve_postprocess",
    "vote_boxes",
]

# What mAP scores (eval, the val AP after each epoch): every candidate down to
# EVAL_SCORE_THRESHOLD. Its values are also the defaults of postprocess_detections.
EVAL_POSTPROCESS = PostprocessConfig(score_threshold=EVAL_SCORE_THRESHOLD)


def resolve_postprocess(
    post: PostprocessConfig | None = None, threshold: float | None = None, **fields: Any
) -> PostprocessConfig:
    """``post`` (default ``PostprocessConfig()``) with the given fields replaced.

    ``threshold`` is ``score_threshold``'s short name (``det.predict(x, threshold=0.3)``);
    ``fields`` are any of PostprocessConfig's (``nms_threshold=0.6``), so a new field
    is a new keyword of every predictor at once. None leaves a field as it is.
    TypeError for a name that is not a field; UsageError for a value out of range.
    """
    post = post if post is not None else PostprocessConfig()
    changes = {k: v for k, v in fields.items() if v is not None}
    if threshold is not None:
        changes["score_threshold"] = threshold
    return replace(post, **changes) if changes else post


def multibox_detection(
    cls_probs: Tensor,
    offset_preds: Tensor,
    anchors: Tensor,
    nms_threshold: float = 0.5,
    pos_threshold: float = 0.009999999,
) -> Tensor:
    """The chapter's prediction rows, for the whole batch at once.

    Confidence is the best non-background probability; boxes are decoded from
    the offsets; class-agnostic NMS at ``nms_threshold``. Rows of kept boxes
    with confidence >= ``pos_threshold`` come first, by descending confidence
    (the chapter's order); every other anchor follows in anchor order with
    class -1 (the chapter writes ``1 - conf`` as their confidence when below
    ``pos_threshold``, and so does this).

    Args:
        cls_probs (Tensor[B, K, A]): class probabilities, background at index 0.
        offset_preds (Tensor[B, 4A]): predicted offsets.
        anchors (Tensor[1, A, 4] or Tensor[A, 4]): normalised xyxy.
    Returns:
        Tensor[B, A, 6]: rows (class 0..C-1 or -1, confidence, x1, y1, x2, y2).
    """
    batch, _, num_anchors = cls_probs.shape
    anchors = anchors.reshape(-1, 4)
    conf, class_id = cls_probs[:, 1:].max(dim=1)  # (B, A)
    boxes = decode_offsets(anchors[None], offset_preds.reshape(batch, -1, 4))  # (B, A, 4)
    # Suppression only flows from higher to lower confidence, so boxes below
    # pos_threshold can be left out of NMS without changing what is kept above it.
    img, idx = (conf >= pos_threshold).nonzero(as_tuple=True)
    keep = batched_nms(boxes[img, idx], conf[img, idx], img, nms_threshold)  # by conf, desc
    keep_img, keep_idx = img[keep], idx[keep]
    kept = torch.zeros(batch, num_anchors, dtype=torch.bool, device=conf.device)
    kept[keep_img, keep_idx] = True
    # Sort key: kept boxes by their rank in NMS output, then the rest by anchor index.
    order = torch.argsort(keep_img, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    key = torch.arange(num_anchors, device=conf.device).repeat(batch, 1) + len(keep)
    key[keep_img[order], keep_idx[order]] = rank[order]
    perm = key.argsort(dim=1)  # (B, A)
    class_id = torch.where(kept, class_id, -1).gather(1, perm)
    conf = conf.gather(1, perm)
    conf = torch.where(conf < pos_threshold, 1 - conf, conf)
    boxes = boxes.gather(1, perm[..., None].expand(-1, -1, 4))
    return torch.cat((class_id[..., None].to(conf.dtype), conf[..., None], boxes), dim=-1)


def postprocess_detections(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    score_threshold: float = EVAL_SCORE_THRESHOLD,
    nms_threshold: float = EVAL_POSTPROCESS.nms_threshold,
    topk_candidates: int = EVAL_POSTPROCESS.topk_candidates,
    max_detections: int = EVAL_POSTPROCESS.max_detections,
    class_agnostic: bool = EVAL_POSTPROCESS.class_agnostic,
    box_vote: float | None = EVAL_POSTPROCESS.box_vote,
    image_sizes: list[tuple[int, int]] | None = None,
) -> list[dict[str, Tensor]]:
    """Detections per image, torchvision-style.

    Softmax over classes; every (anchor, class) pair with score >=
    ``score_threshold`` is a candidate; the ``topk_candidates`` best per image
    go to NMS (per class unless ``class_agnostic``); the ``max_detections``
    best survivors are returned, each box voted by the candidates of its class that
    overlap it (:func:`vote_boxes` with sigma ``box_vote``; None: ``DEFAULT_BOX_VOTE``,
    0: off).
    The defaults are ``EVAL_POSTPROCESS``'s
    (:class:`PostprocessConfig` with the eval score threshold); a config goes in as
    ``**dataclasses.asdict(post)``.

    Args:
        cls_logits (Tensor[B, A, K]): raw class scores, background at index 0.
        box_deltas (Tensor[B, A, 4] or Tensor[B, 4A]): predicted offsets.
        anchors (Tensor[A, 4] or Tensor[1, A, 4]): normalised xyxy.
        image_sizes: per image (height, width); boxes are scaled to those
            pixels, else they stay normalised.
    Returns:
        One dict per image: ``boxes`` Tensor[N, 4] xyxy clipped to the image, ``scores`` Tensor[N],
        ``labels`` Tensor[N] int64 in 1..C, sorted by descending score.
    """
    batch, num_anchors, num_classes = cls_logits.shape
    anchors = anchors.reshape(-1, 4)
    scores = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]  # (B, A, C)
    boxes = decode_offsets(anchors[None], box_deltas.float().reshape(batch, num_anchors, 4))
    flat = scores.reshape(batch, -1)  # (B, A*C), index = anchor * C + class - 1
    k = min(topk_candidates, flat.shape[1])
    top_scores, top_idx = flat.topk(k, dim=1)  # (B, k), sorted
    anchor_idx = top_idx // (num_classes - 1)
    labels = top_idx % (num_classes - 1) + 1
    img = torch.arange(batch, device=flat.device)[:, None].expand(-1, k)
    ok = top_scores >= score_threshold
    img, top_scores, labels = img[ok], top_scores[ok], labels[ok]
    cand_boxes = boxes[img, anchor_idx[ok]].clamp(0.0, 1.0)  # (N, 4), clipped to the image
    group = img if class_agnostic else img * num_classes + labels
    keep = batched_nms(cand_boxes, top_scores, group, nms_threshold)  # desc score
    keep = keep[torch.argsort(img[keep], stable=True)]
    counts = torch.bincount(img[keep], minlength=batch).tolist()
    vote = DEFAULT_BOX_VOTE if box_vote is None else box_vote
    out = []
    for b, part in enumerate(keep.split(counts)):
        part = part[:max_detections]
        bx = cand_boxes[part]
        if vote > 0:
            mine = img == b
            voters = None if class_agnostic else (labels[part], labels[mine])
            bx = vote_boxes(bx, cand_boxes[mine], top_scores[mine], vote, voters)
        if image_sizes is not None:
            bx = scale_boxes(bx, image_sizes[b])
        out.append({"boxes": bx, "scores": top_scores[part], "labels": labels[part]})
    return out


def vote_boxes(
    kept: Tensor,
    candidates: Tensor,
    scores: Tensor,
    sigma: float | Tensor,
    labels: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Score voting (PAA, VFNet): each box NMS kept becomes the mean of the candidates
    that overlap it, weighted by ``score * exp(-(1 - IoU)^2 / sigma)``, so close
    duplicates count and loose neighbours hardly do. NMS keeps one box of a cluster
    and drops the others' evidence; their mean is tighter (BCCD, one run, ``sigma``
    0.05: val AP75 0.540 -> 0.570, test 0.560 -> 0.602; bench/box_vote.py). A kept
    box is one of the candidates, so it votes for itself; a candidate with score 0
    does not vote.

    Args:
        kept (Tensor[..., D, 4]): the boxes NMS kept, xyxy.
        candidates (Tensor[..., N, 4]): the boxes that went into NMS, xyxy.
        scores (Tensor[..., N]): the candidates' scores (0: not a candidate).
        sigma: the width of the IoU weight, > 0 (IoU 0.9 weighs exp(-0.01 / sigma):
            0.82 at 0.05; IoU 0.7 0.17).
        labels: (Tensor[..., D], Tensor[..., N]): the kept boxes' and the candidates'
            classes; only a candidate of the kept box's class votes. None: any votes.
    Returns:
        Tensor[..., D, 4]: the voted boxes (a kept box without voters unchanged).
    """
    iou = paired_box_iou(kept[..., :, None, :], candidates[..., None, :, :])  # (..., D, N)
    votes = iou > 0
    if labels is not None:
        votes = votes & (labels[0][..., :, None] == labels[1][..., None, :])
    closeness = torch.exp(-((1 - iou) ** 2) / sigma)
    weights = torch.where(votes, scores[..., None, :] * closeness, 0.0)  # (..., D, N)
    total = weights.sum(dim=-1, keepdim=True)
    mean = (weights @ candidates) / total.clamp(min=torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, mean, kept)
