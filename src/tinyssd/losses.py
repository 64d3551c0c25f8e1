"""SSD losses: the chapter's CE + masked L1, and its exercises as options of one loss.

    loss = cls_weight * L_cls + box_weight * L_box

- ``cls``: ``ce`` (cross-entropy), ``focal`` (softmax focal loss,
  ``-alpha_t (1 - p_t)^gamma log p_t``, alpha_t = ``alpha`` for objects and
  ``1 - alpha`` for background) or ``qfl`` (quality focal loss: a positive's
  class target is the IoU of its predicted box with its object, so scores rank
  tight boxes first; ``quality_focal_loss``; needs ``anchors``).
- ``box``: ``l1`` or ``smooth_l1`` with ``sigma`` (quadratic for |x| < 1/sigma^2)
  on the encoded offsets, or ``giou`` / ``diou`` / ``ciou``: 1 - (G/D/C)IoU of the
  decoded predicted box with its ground-truth box (needs ``anchors``), plus
  ``l1_weight`` x the L1 offset loss.
- ``neg_pos``: hard negative mining; per image keep all positives and the
  ``neg_pos`` x #positives background anchors with the highest class loss.
- ``normalize``: ``anchors`` (the chapter: per image, class loss averaged over
  its anchors and box loss over 4A, then the batch mean) or ``positives`` (the
  paper: sums over the batch divided by its number of positive anchors; in a
  distributed run, the positives of the whole global batch: ``positives_divisor``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from .boxes import decode_offsets, elementwise_box_iou

CLS_LOSSES = ("ce", "focal", "qfl")
BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou")
IOU_LOSSES = {
    "giou": generalized_box_iou_loss,
    "diou": distance_box_iou_loss,
    "ciou": complete_box_iou_loss,
}


@dataclass(frozen=True)
class LossConfig:
    cls: str = "ce"  # "ce", "focal" or "qfl" (IoU-aware: the target is the box's IoU)
    gamma: float = 2.0  # focal: focusing exponent
    alpha: float | None = 0.25  # focal: weight of object anchors (None: no weighting)
    box: str = "l1"  # "l1", "smooth_l1", or on decoded boxes "giou", "diou", "ciou"
    sigma: float = 1.0  # smooth-L1: 1/sigma^2 is where it turns linear
    neg_pos: float | None = None  # hard negative mining ratio (None: every anchor counts)
    cls_weight: float = 1.0
    box_weight: float = 1.0
    normalize: str = "anchors"  # "anchors" (chapter) or "positives" (paper)
    l1_weight: float = 0.0  # IoU-family box losses: weight of an added L1 offset loss

    def __post_init__(self) -> None:
        for name, allowed in (
            ("cls", CLS_LOSSES),
            ("box", BOX_LOSSES),
            ("normalize", ("anchors", "positives")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"loss {name}={getattr(self, name)!r}: choose from {allowed}")

    @staticmethod
    def parse(spec: str) -> LossConfig:
        """``"chapter"``, ``"ssd"`` (smooth-L1, 3:1 mining, per positive),
        ``"focal_giou"`` (``FOCAL_GIOU``) or ``"k=v,k=v"``."""
        if spec in ("", "chapter"):
            return LossConfig()
        if spec == "ssd":
            return LossConfig(box="smooth_l1", neg_pos=3.0, normalize="positives")
        if spec == "focal_giou":
            return FOCAL_GIOU
        if spec == "qfl_giou":
            return QFL_GIOU
        types = {f.name: f.type for f in fields(LossConfig)}
        kw: dict = {}
        for item in spec.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in types:
                raise ValueError(
                    f"loss option {item!r}: expected key=value with key in {list(types)}"
                )
            if key in ("cls", "box", "normalize"):
                kw[key] = value.strip()
            elif value.strip().lower() in ("none", ""):
                kw[key] = None
            else:
                try:
                    kw[key] = float(value)
                except ValueError:
                    raise ValueError(f"loss option {item!r}: {value!r} is not a number") from None
        return LossConfig(**kw)

    def to_dict(self) -> dict:
        return asdict(self)


def iou_box_loss(kind: str, pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """``1 - GIoU`` (or DIoU / CIoU, torchvision's definitions) of each pair.

    Args:
        kind: ``giou``, ``diou`` or ``ciou``.
        pred_boxes (Tensor[N, 4]), gt_boxes (Tensor[N, 4]): xyxy.
    Returns:
        Tensor[N]: in [0, 2); 0 for identical boxes.
    """
    return IOU_LOSSES[kind](pred_boxes, gt_boxes, reduction="none")


def smooth_l1(x: Tensor, sigma: float = 1.0) -> Tensor:
    """Elementwise smooth-L1 (Fast R-CNN's, with sigma): 0.5 (sigma x)^2 or |x| - 0.5/sigma^2."""
    s2 = sigma * sigma
    ax = x.abs()
    return torch.where(ax < 1.0 / s2, 0.5 * s2 * x * x, ax - 0.5 / s2)


def focal_loss(logits: Tensor, target: Tensor, gamma: float, alpha: float | None) -> Tensor:
    """Softmax focal loss per anchor.

    Args:
        logits (Tensor[N, K]), target (Tensor[N] int64, 0 = background).
    Returns:
        Tensor[N].
    """
    log_p = F.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    if alpha is not None:
        loss = loss * torch.where(target > 0, alpha, 1 - alpha)
    return loss


def quality_focal_loss(
    logits: Tensor, target: Tensor, quality: Tensor, gamma: float, alpha: float | None
) -> Tensor:
    """Softmax quality focal loss per anchor (Li et al., 2020, with a background class).

    A positive anchor's target puts ``quality`` (its predicted box's IoU with its
    object, in [0, 1], no gradient) on its class and the rest on background; a
    negative's puts 1 on background. The soft cross-entropy is scaled by
    ``|q - p|^gamma`` of the target class, which for a negative is the focal
    term ``(1 - p_bg)^gamma``: ``focal_loss`` is the case ``quality == 1``.

    Args:
        logits (Tensor[N, K]), target (Tensor[N] int64, 0 = background),
        quality (Tensor[N]): IoU of each positive's decoded box (ignored for negatives).
    Returns:
        Tensor[N].
    """
    log_p = F.log_softmax(logits, dim=-1)
    log_p_target = log_p.gather(1, target[:, None])[:, 0]
    q = torch.where(target > 0, quality.to(log_p.dtype).clamp(0, 1), 1.0)
    soft_ce = -(q * log_p_target + (1 - q) * log_p[:, 0])
    loss = (q - log_p_target.exp()).abs() ** gamma * soft_ce
    if alpha is not None:
        loss = loss * torch.where(target > 0, alpha, 1 - alpha)
    return loss


def hard_negative_mask(cls_loss: Tensor, positive: Tensor, neg_pos: float) -> Tensor:
    """Anchors that count for the class loss: positives and the hardest negatives.

    Args:
        cls_loss (Tensor[B, A]): per-anchor class loss.
        positive (Tensor[B, A] bool).
    Returns:
        Tensor[B, A] bool: positives, plus per image the ``neg_pos * #positives``
        background anchors with the largest loss.
    """
    num_neg = (positive.sum(dim=1, keepdim=True) * neg_pos).floor()  # (B, 1)
    neg_loss = cls_loss.detach().masked_fill(positive, -float("inf"))
    order = neg_loss.argsort(dim=1, descending=True)
    rank = order.argsort(dim=1)  # rank of each anchor by loss, 0 = hardest
    return positive | (rank < num_neg)


class MultiBoxLoss(nn.Module):
    """The SSD loss over a batch. Call with the model outputs and ``anchor_targets``' (the
    chapter's ``multibox_target``'s)."""

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()

    def forward(
        self,
        cls_logits: Tensor,
        cls_targets: Tensor,
        box_deltas: Tensor,
        box_targets: Tensor,
        box_mask: Tensor,
        anchors: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss and its two parts.

        Args:
            cls_logits (Tensor[B, A, K]): logits.
            cls_targets (Tensor[B, A] int64): 0 = background.
            box_deltas, box_targets, box_mask (Tensor[B, 4A]).
            anchors (Tensor[1, A, 4] or Tensor[A, 4]): normalised xyxy; needed
                by the IoU-family box losses, which decode both the predicted
                and the target offsets on them.
        Returns:
            ``{"loss", "cls_loss", "box_loss"}``, scalars; ``loss`` is the one to
            back-propagate.
        """
        c = self.config
        batch, num_anchors, num_classes = cls_logits.shape
        logits, target = cls_logits.reshape(-1, num_classes).float(), cls_targets.reshape(-1)
        if c.cls == "focal":
            cls = focal_loss(logits, target, c.gamma, c.alpha)
        elif c.cls == "qfl":
            quality = _box_quality(box_deltas, box_targets, cls_targets > 0, anchors)
            cls = quality_focal_loss(logits, target, quality.reshape(-1), c.gamma, c.alpha)
        else:
            cls = F.cross_entropy(logits, target, reduction="none")
        cls = cls.reshape(batch, num_anchors)
        diff = (box_deltas.float() - box_targets) * box_mask
        box = smooth_l1(diff, c.sigma) if c.box == "smooth_l1" else diff.abs()  # (B, 4A)

        positive = cls_targets > 0
        if c.box in IOU_LOSSES:
            box = c.l1_weight * box + _iou_loss_per_value(
                c.box, box_deltas.float(), box_targets, positive, anchors
            )
        counted = (
            hard_negative_mask(cls, positive, c.neg_pos)
            if c.neg_pos is not None
            else torch.ones_like(positive)
        )
        if c.normalize == "anchors":
            n_counted = counted.sum(dim=1).clamp(min=1)
            cls_loss = ((cls * counted).sum(dim=1) / n_counted).mean()
            box_loss = box.mean(dim=1).mean()
        else:
            n_pos = positives_divisor(positive.sum())
            cls_loss = (cls * counted).sum() / n_pos
            box_loss = box.sum() / n_pos
        loss = c.cls_weight * cls_loss + c.box_weight * box_loss
        return {"loss": loss, "cls_loss": cls_loss.detach(), "box_loss": box_loss.detach()}


def positives_divisor(n_pos: Tensor) -> Tensor:
    """What a process divides its loss sums by: ``max(1, n_pos)``; with W processes,
    ``max(1, N) / W`` for N the positives of all of them (one all-reduce).

    DDP averages the processes' gradients, so each then contributes
    ``(1/W) * S_r / (N/W) = S_r / N``: together, one process's loss over the
    whole global batch (dividing by its own ``n_pos`` would weigh a process with
    few positives up).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return n_pos.clamp(min=1)
    total = n_pos.detach().clone()
    dist.all_reduce(total)
    return total.clamp(min=1) / dist.get_world_size()


def _decoded_positives(
    box_deltas: Tensor, box_targets: Tensor, positive: Tensor, anchors: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The predicted and target boxes of the positive anchors, decoded on them.

    Returns:
        (img, idx) (Tensor[P] each), pred (Tensor[P, 4]), gt (Tensor[P, 4]) xyxy.
    """
    if anchors is None:
        raise ValueError("IoU-based losses decode boxes: pass anchors= to MultiBoxLoss")
    batch, num_anchors = positive.shape
    img, idx = positive.nonzero(as_tuple=True)  # (P,) each
    anchors = anchors.reshape(-1, 4).float()[idx]
    pred = decode_offsets(anchors, box_deltas.float().reshape(batch, num_anchors, 4)[img, idx])
    gt = decode_offsets(anchors, box_targets.float().reshape(batch, num_anchors, 4)[img, idx])
    return img, idx, pred, gt


def _box_quality(
    box_deltas: Tensor, box_targets: Tensor, positive: Tensor, anchors: Tensor | None
) -> Tensor:
    """IoU of each positive anchor's predicted box with its object (no gradient), 0 elsewhere.

    Returns:
        Tensor[B, A].
    """
    with torch.no_grad():
        img, idx, pred, gt = _decoded_positives(box_deltas, box_targets, positive, anchors)
        quality = box_targets.new_zeros(positive.shape, dtype=torch.float32)
        quality[img, idx] = elementwise_box_iou(pred, gt)
    return quality


def _iou_loss_per_value(
    kind: str, box_deltas: Tensor, box_targets: Tensor, positive: Tensor, anchors: Tensor | None
) -> Tensor:
    """The IoU-family loss of each positive anchor, spread over its 4 box values
    so that it reduces like the offset losses.

    Args:
        box_deltas, box_targets (Tensor[B, 4A]), positive (Tensor[B, A] bool),
        anchors (Tensor[A, 4] or Tensor[1, A, 4]).
    Returns:
        Tensor[B, 4A]: ``loss / 4`` on each of a positive anchor's 4 values, else 0.
    """
    batch, num_anchors = positive.shape
    img, idx, pred, gt = _decoded_positives(box_deltas, box_targets, positive, anchors)
    out = box_deltas.new_zeros(batch, num_anchors)
    out[img, idx] = iou_box_loss(kind, pred, gt)
    return (out / 4).repeat_interleave(4, dim=1)


def chapter_loss(
    cls_preds: Tensor,
    cls_labels: Tensor,
    bbox_preds: Tensor,
    bbox_labels: Tensor,
    bbox_masks: Tensor,
) -> Tensor:
    """The chapter's ``calc_loss``: per-image CE mean + masked L1 mean.

    Returns:
        Tensor[B]: one loss per image (the chapter back-propagates its mean).
    """
    batch, _, num_classes = cls_preds.shape
    cls = F.cross_entropy(
        cls_preds.reshape(-1, num_classes), cls_labels.reshape(-1), reduction="none"
    ).reshape(batch, -1)
    bbox = F.l1_loss(bbox_preds * bbox_masks, bbox_labels * bbox_masks, reduction="none")
    return cls.mean(dim=1) + bbox.mean(dim=1)


# tinyssd's default: focal loss over every anchor + GIoU on decoded boxes, both per
# positive (RetinaNet's class loss with an IoU box loss). Pair it with
# ``models.prior.init_class_prior``: focal sums thousands of background anchors.
FOCAL_GIOU = LossConfig(
    cls="focal", gamma=2.0, alpha=0.25, box="giou", normalize="positives", box_weight=2.0
)

# IoU-aware variant of the default: the class target of a positive is its box's IoU.
QFL_GIOU = LossConfig(
    cls="qfl", gamma=2.0, alpha=0.25, box="giou", normalize="positives", box_weight=2.0
)
