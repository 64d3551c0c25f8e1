"""Starting from what is already learned: ``--init``, ``--pretrained`` and ``--freeze``.

    tinyssd train --data mydata --init runs/bananas                 # any tinyssd checkpoint
    tinyssd train --data mydata --model ssd_resnet18 --pretrained   # torchvision's ImageNet weights
    tinyssd train --data mydata --init runs/big --freeze backbone --freeze-epochs 3

``--init`` copies every tensor of a checkpoint's ``model.`` weights whose name
and shape match the new network; class heads of another class count keep
their fresh initialisation. Unlike ``--resume`` it takes no optimiser, epoch
or RNG state. ``--pretrained`` loads the backbone's ImageNet weights through
torchvision's weights API and cache (``$TORCH_HOME/hub/checkpoints``).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from ..checkpoint import read_checkpoint, resolve_checkpoint, split_state
from ..config import RunConfig
from ..errors import CheckpointError, UsageError
from ..models import PRESETS, SSD
from ..models.ssd import BACKBONES

log = logging.getLogger("tinyssd")

__all__ = [
    "BackboneFreeze",
    "LoadReport",
    "backbone_freeze",
    "check_finetune",
    "compact_names",
    "imagenet_weights",
    "init_model",
    "load_imagenet_backbone",
    "load_matching",
    "start_from",
    "trunk_modules",
]


@dataclass
class LoadReport:
    """Which of a network's tensors a load filled (``loaded``) and which it left (``kept``)."""

    source: str  # the file the tensors came from
    loaded: list[str]  # state_dict names taken from the file
    kept: list[str]  # state_dict names left as initialised

    def summary(self) -> str:
        """``loaded 40 of 50 tensors from X; re-initialised: cls_heads.0-4``."""
        total = len(self.loaded) + len(self.kept)
        kept = compact_names(self.kept) or "none"
        loaded = f"loaded {len(self.loaded)} of {total} tensors from {self.source}"
        return f"{loaded}; re-initialised: {kept}"


def compact_names(names: Iterable[str]) -> str:
    """Module names of state_dict keys, numbered siblings as ranges.

    Example: ``cls_heads.0.weight, cls_heads.0.bias, ..., cls_heads.4.bias,
    backbone.extras.1.0.weight`` -> ``"cls_heads.0-4, backbone.extras.1"``.
    The name is cut at its first numeric part (or before the tensor name).
    """
    groups: dict[str, set[int]] = {}
    for name in names:
        parts = name.split(".")
        index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if index is None:
            groups.setdefault(".".join(parts[:-1]) or name, set())
        else:
            groups.setdefault(".".join(parts[:index]), set()).add(int(parts[index]))
    return ", ".join(f"{m}.{_ranges(i)}" if i else m for m, i in groups.items())


def _ranges(numbers: set[int]) -> str:
    """``{0, 1, 2, 4}`` -> ``"0-2,4"``."""
    ordered = sorted(numbers)
    runs: list[list[int]] = []
    for n in ordered:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


# ---------------------------------------------------------------------------- --init


def init_model(path: str | Path) -> str | None:
    """The preset a checkpoint (or run folder) holds: ``--init``'s default ``--model``."""
    try:
        _, meta = read_checkpoint(resolve_checkpoint(path, prefer="best"))
    except CheckpointError as e:
        raise CheckpointError(f"--init {e}") from None
    name = (meta.get("config") or {}).get("model")
    return name if name in PRESETS else None


def _check_architecture(path: Path, saved: dict, model: SSD) -> None:
    """CheckpointError when the checkpoint's network is another preset or backbone."""
    ssd = saved.get("ssd") or {}
    name, backbone = ssd.get("name"), ssd.get("backbone")
    if (name, backbone) != (model.config.name, model.config.backbone):
        raise CheckpointError(
            f"{path}: holds model {name} (backbone {backbone}), which cannot initialise "
            f"--model {model.config.name} (backbone {model.config.backbone}); "
            f"leave out --model to train a {name}"
        )


def load_matching(model: SSD, path: str | Path) -> LoadReport:
    """Copy every tensor of a checkpoint's ``model.`` weights whose name and shape match.

    ``path`` is a run folder (its best, else last, checkpoint) or a file. The
    checkpoint must be of the same preset and backbone, and every backbone
    tensor must match; otherwise a one-line CheckpointError. Class heads of
    another class count (and anything else of another shape) stay as built.
    """
    file = resolve_checkpoint(path, prefer="best")
    tensors, meta = read_checkpoint(file)
    _check_architecture(file, meta.get("config") or {}, model)
    saved = split_state(tensors, "model.")
    own = model.state_dict()
    matched = {k: v for k, v in saved.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k.startswith("backbone.") and k not in matched]
    if missing:
        raise CheckpointError(
            f"{file}: {len(missing)} backbone tensors are missing or of another shape "
            f"(first: {missing[0]}); not a checkpoint of this architecture"
        )
    model.load_state_dict({**own, **matched})
    return LoadReport(str(file), list(matched), [k for k in own if k not in matched])


# ---------------------------------------------------------------------------- --pretrained


def imagenet_weights(model_name: str) -> WeightsEnum | None:
    """The torchvision ImageNet weights of a preset's backbone, or None if it has none."""
    backbone = BACKBONES[PRESETS[model_name]().backbone]
    return getattr(backbone, "imagenet_weights", None)


def _weights_file(weights: WeightsEnum) -> Path:
    """Where torchvision keeps (or would download) the weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _read_imagenet(weights: WeightsEnum, progress: bool) -> dict[str, Tensor]:
    """torchvision's state dict for ``weights`` (downloaded once, hash-checked when it is).

    CheckpointError, one line, when it is neither cached nor downloadable, or unreadable.
    """
    file = _weights_file(weights)
    cached = file.is_file()
    try:
        return weights.get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        # URLError and socket errors are OSErrors; a bad hash is a RuntimeError
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        if cached:
            raise CheckpointError(
                f"{file}: not a readable weights file ({reason}); delete it to download it again"
            ) from None
        raise CheckpointError(
            f"--pretrained: {file.name} is not in {file.parent} and could not be downloaded "
            f"({reason}); download {weights.url} and put it at {file} "
            "(the folder is $TORCH_HOME/hub/checkpoints)"
        ) from None


def load_imagenet_backbone(model: SSD, progress: bool = True) -> LoadReport:
    """Load the backbone's ImageNet weights (torchvision's names) into ``model.backbone``.

    Tensors of the file that the backbone lacks (the classifier) are ignored;
    the backbone's own extra layers and the heads stay as built.
    """
    weights = getattr(model.backbone, "imagenet_weights", None)
    if weights is None:
        raise UsageError(f"--pretrained: {model.config.name} has no ImageNet weights")
    state = _read_imagenet(weights, progress)
    own = model.backbone.state_dict()
    matched = {k: v for k, v in state.items() if k in own} if isinstance(state, dict) else {}
    wrong = [k for k, v in matched.items() if v.shape != own[k].shape]
    if wrong or not matched:
        first = f"{wrong[0]} is {tuple(matched[wrong[0]].shape)}" if wrong else "no tensor fits"
        raise CheckpointError(
            f"{_weights_file(weights)}: not the {weights} weights of this backbone ({first})"
        )
    model.backbone.load_state_dict({**own, **matched})
    loaded = [f"backbone.{k}" for k in matched]
    kept = [k for k in model.state_dict() if k not in set(loaded)]
    return LoadReport(f"{weights} ({_weights_file(weights).name})", loaded, kept)


# ---------------------------------------------------------------------------- the run's start


def check_finetune(cfg: RunConfig) -> None:
    """UsageError for an ``--init`` / ``--pretrained`` / ``--freeze`` request no run can do."""
    if cfg.init and cfg.pretrained:
        raise UsageError("--init and --pretrained: give one (--init already sets the backbone)")
    if cfg.pretrained and cfg.model in PRESETS and imagenet_weights(cfg.model) is None:
        with_weights = [m for m in PRESETS if imagenet_weights(m) is not None]
        raise UsageError(
            f"--pretrained: --model {cfg.model} has no ImageNet weights "
            f"(models with them: {', '.join(with_weights)})"
        )
    if cfg.freeze_epochs and cfg.freeze != "backbone":
        raise UsageError(f"--freeze-epochs {cfg.freeze_epochs}: needs --freeze backbone")


def start_from(model: SSD, cfg: RunConfig) -> LoadReport | None:
    """``--init`` or ``--pretrained`` weights put into a new ``model``; logs one line.

    Does nothing for a resumed run: its checkpoint's weights replace these.
    """
    if cfg.resume or not (cfg.init or cfg.pretrained):
        return None
    if cfg.init:
        report = load_matching(model, cfg.init)
    else:
        report = load_imagenet_backbone(model, progress=cfg.progress)
    log.info("%s", report.summary())
    return report


def trunk_modules(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's named modules that ``--freeze backbone`` freezes: all but its SSD
    ``extras`` (new layers on top of an ImageNet trunk), where it has them."""
    return [
        (name, m)
        for name, m in backbone.named_modules()
        if name != "extras" and not name.startswith("extras.")
    ]


def _trunk_batchnorm_eval(backbone: nn.Module, args: tuple) -> None:
    for _, layer in trunk_modules(backbone):
        if isinstance(layer, nn.BatchNorm2d):
            layer.eval()


class BackboneFreeze:
    """``--freeze backbone``: the backbone's trunk takes no gradient and keeps its BatchNorm
    statistics.

    The trunk is the backbone less its ``extras`` (``trunk_modules``). Frozen
    for the first ``epochs`` epochs, or the whole run when ``epochs`` is 0;
    ``epochs=None`` never freezes. Frozen BatchNorm layers run in eval mode
    (detectron2 freezes them so): a forward pre-hook sets it, because every
    epoch starts with ``model.train()``. The optimiser holds the frozen
    parameters too; without gradients it leaves them (and their decay) alone.
    """

    def __init__(self, model: SSD, epochs: int | None) -> None:
        if epochs and torch.distributed.is_available() and torch.distributed.is_initialized():
            raise UsageError(
                f"--freeze-epochs {epochs}: not with several processes (DDP fixes the trained "
                "parameters when it starts); use --freeze-epochs 0"
            )
        self.backbone = model.backbone
        trunk = [m for _, m in trunk_modules(model.backbone)]
        self.parameters = [p for m in trunk for p in m.parameters(recurse=False)]
        self.epochs = epochs
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self.set_epoch(0)

    def frozen_at(self, epoch: int) -> bool:
        return self.epochs is not None and (self.epochs == 0 or epoch < self.epochs)

    def set_epoch(self, epoch: int) -> None:
        """Freeze or unfreeze for 0-based ``epoch``."""
        frozen = self.frozen_at(epoch)
        if frozen == (self._hook is not None):
            return
        for p in self.parameters:
            p.requires_grad_(not frozen)
        if frozen:
            self._hook = self.backbone.register_forward_pre_hook(_trunk_batchnorm_eval)
        else:
            assert self._hook is not None
            self._hook.remove()
            self._hook = None
            log.info("epoch %d: backbone unfrozen", epoch + 1)


def backbone_freeze(model: SSD, cfg: RunConfig) -> BackboneFreeze:
    """The run's ``BackboneFreeze`` (a no-op without ``--freeze backbone``)."""
    return BackboneFreeze(model, cfg.freeze_epochs if cfg.freeze == "backbone" else None)
