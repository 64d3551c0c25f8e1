"""Optimisation: parameter groups, the optimizer, the learning-rate schedule, weight EMA.

    groups = param_groups(model, weight_decay=5e-4)      # no decay on norm / bias
    optimizer = build_optimizer(groups, "sgd", lr=0.02, momentum=0.9)
    for it in range(total):
        set_lr(optimizer, lr_at(it, total, base_lr=0.02, warmup=200))
        ...; optimizer.step(); ema.update(model)

The schedule is a pure function of the iteration, so a resumed run and a
plot of the schedule need nothing but the step number.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..options import OPTIMIZERS, SCHEDULES

# Parameters of these layers are scales and shifts, not filters: decaying them
# towards 0 only fights the normalisation.
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: conv / linear weights with ``weight_decay``, and
    every norm-layer parameter and bias without.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0}]``; every trainable
        parameter is in exactly one group.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, _NORM_LAYERS) or name == "bias" or p.ndim <= 1:
                no_decay.append(p)
            else:
                decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    params: list[dict] | list[nn.Parameter] | nn.Module,
    name: str = "sgd",
    lr: float = 0.02,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> torch.optim.Optimizer:
    """``sgd`` (heavy-ball momentum), ``nesterov`` or ``adamw`` (betas (momentum, 0.999)).

    ``params`` is a module (grouped by ``param_groups`` with ``weight_decay``),
    ready groups (their own ``weight_decay`` values win) or parameters (all
    decayed with ``weight_decay``).
    """
    if isinstance(params, nn.Module):
        params = param_groups(params, weight_decay)
    if name in ("sgd", "nesterov"):
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=name == "nesterov" and momentum > 0,
            weight_decay=weight_decay,
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"optimizer {name!r}: choose from {', '.join(OPTIMIZERS)}")


def lr_at(
    step: int,
    total: int,
    base_lr: float,
    warmup: int = 0,
    schedule: str = "cosine",
    final_ratio: float = 0.01,
    warmup_ratio: float = 0.001,
    milestones: tuple[float, ...] = (0.67, 0.89),
    gamma: float = 0.1,
) -> float:
    """Learning rate of iteration ``step`` (0-based) of ``total``.

    Warm-up: linear from ``warmup_ratio * base_lr`` at step 0 to ``base_lr``
    at step ``warmup``. Then ``cosine`` decays to ``final_ratio * base_lr`` at
    the last step, ``step`` multiplies by ``gamma`` at each fraction of
    ``total`` in ``milestones``, ``constant`` stays at ``base_lr``.

    Example (base 0.1, total 101, warmup 0, cosine, final_ratio 0)::

        lr_at(0) = 0.1, lr_at(50) = 0.05, lr_at(100) = 0.0
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: choose from {', '.join(SCHEDULES)}")
    if step < warmup:
        return base_lr * (warmup_ratio + (1 - warmup_ratio) * step / warmup)
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        drops = sum(step >= m * total for m in milestones)
        return base_lr * gamma**drops
    span = max(total - 1 - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return base_lr * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group of ``optimizer`` the learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class ModelEMA:
    """Exponential moving average of a model's weights (and copies of its buffers).

    After each optimizer step, ``ema = d * ema + (1 - d) * weights`` with
    ``d = decay * (1 - exp(-updates / tau))``: the ramp lets the average
    follow the fast early changes (YOLOv5's ModelEMA). Evaluate ``ema.module``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 2000.0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next ``update`` will use."""
        if self.tau <= 0:
            return self.decay
        return self.decay * (1 - math.exp(-(self.updates + 1) / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (same architecture) into the average."""
        d = self.current_decay()
        self.updates += 1
        model_state = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = model_state[name].detach()
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(d).add_(value.to(ema_value.dtype), alpha=1 - d)
            else:
                ema_value.copy_(value)
