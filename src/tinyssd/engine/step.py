"""One training step and the epoch's running sums: ``train_step`` (forward, label
anchors, loss, backward, optimiser step) returns a ``Step``; an ``EpochMeter`` adds
the steps up into the epoch's training metrics (a metrics.csv row's first half).

    meter = EpochMeter(device)
    for images, targets in batches:
        meter.add(train_step(model, loss_fn, optimizer, images, targets))
    meter.result()["loss"]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..inference import autocast
from ..losses import MultiBoxLoss
from ..matching import anchor_targets


@dataclass
class Step:
    """What one training step computed: its losses, and predictions against targets."""

    losses: dict[str, Tensor]  # "loss", "cls_loss", "box_loss"
    cls_logits: Tensor  # (B, A, K)
    cls_targets: Tensor  # (B, A) int64, 0 = background
    box_deltas: Tensor  # (B, 4A)
    box_targets: Tensor  # (B, 4A)
    box_mask: Tensor  # (B, 4A)


def train_step(
    step_model: torch.nn.Module,
    loss_fn: MultiBoxLoss,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    targets: Tensor,
    autocast_dtype: torch.dtype | None = None,
    grad_clip: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
    assigner: str = "max_iou",
) -> Step:
    """One iteration: forward (channels_last, optional autocast), label anchors, loss,
    backward, (gradient clipping,) optimiser step; through ``scaler`` (fp16) if given.

    ``images`` (Tensor[B, 3, S, S]), ``targets`` (Tensor[B, M, 5]): ``collate``'s rows
    (class 1..C, normalised xyxy; class 0 = padding); ``assigner``: which anchors learn
    a box (``matching.anchor_targets``)."""
    images = images.contiguous(memory_format=torch.channels_last)
    with autocast(images.device, autocast_dtype):
        anchors, cls_logits, box_deltas = step_model(images)
    box_targets, box_mask, cls_targets = anchor_targets(anchors, targets, assigner=assigner)
    losses = loss_fn(cls_logits, cls_targets, box_deltas, box_targets, box_mask, anchors)
    scaler = scaler or torch.amp.GradScaler(images.device.type, enabled=False)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(step_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return Step(losses, cls_logits, cls_targets, box_deltas, box_targets, box_mask)


class EpochMeter:
    """Sums of the chapter's metrics on the device (no host sync per batch)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)
        self.images = 0
        self.box_values_per_image = 0
        self.seconds = 0.0

    def add(self, step: Step) -> None:
        n = len(step.cls_targets)
        with torch.no_grad():
            correct = (step.cls_logits.argmax(dim=-1) == step.cls_targets).sum()
            abs_err = ((step.box_targets - step.box_deltas) * step.box_mask).abs().sum()
            self.sums += torch.stack(
                [
                    step.losses["loss"].detach().double() * n,
                    step.losses["cls_loss"].double() * n,
                    step.losses["box_loss"].double() * n,
                    correct.double(),
                    torch.tensor(float(step.cls_targets.numel()), dtype=torch.float64),
                    abs_err.double(),
                ]
            )
        self.images += n
        self.box_values_per_image = step.box_targets.shape[1]

    def result(self) -> dict[str, float]:
        loss, cls, box, correct, anchors, abs_err = self.sums.tolist()
        n = max(self.images, 1)
        return {
            "loss": loss / n,
            "cls_loss": cls / n,
            "box_loss": box / n,
            "class_err": 1 - correct / max(anchors, 1),
            "bbox_mae": abs_err / max(self.images * self.box_values_per_image, 1),
            "seconds": self.seconds,
            "images_per_s": self.images / max(self.seconds, 1e-9),
        }
