"""Starting from what is already learned: ``--init``, ``--pretrained`` and ``--freeze``.

    tinyssd train --data mydata --init runs/bananas                 # any tinyssd checkpoint
    tinyssd train --data mydata --model ssd_resnet18 --pretrained   # torchvision's ImageNet weights
    tinyssd train --data mydata --model ssdlite320_mobilenet_v3_large --pretrained coco
    tinyssd train --data mydata --init runs/big --freeze backbone --freeze-epochs 3

``--init`` copies every tensor of a checkpoint's ``model.`` weights whose name
and shape match the new network; class heads of another class count keep
their fresh initialisation. Unlike ``--resume`` it takes no optimiser, epoch
or RNG state. ``--pretrained imagenet`` (or bare ``--pretrained``) loads the
backbone's ImageNet weights, ``--pretrained coco`` torchvision's whole COCO
detector (``models.coco``; the network then has torchvision's geometry,
``models.coco.coco_config``), both through torchvision's weights API and
cache (``$TORCH_HOME/hub/checkpoints``), fetched by :func:`check_finetune`
before any data is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import WeightsEnum

from ..checkpoint import read_checkpoint, read_metadata, resolve_checkpoint, split_state
from ..config import RunConfig
from ..errors import CheckpointError, UsageError
from ..models import PRESETS, SSD
from ..models.coco import COCO_WEIGHTS, load_coco_weights
from ..models.ssd import BACKBONES
from ..models.weights import fetch_weights, read_weights, weights_file

log = logging.getLogger("tinyssd")

__all__ = [
    "BackboneFreeze",
    "LoadReport",
    "backbone_freeze",
    "check_finetune",
    "check_init",
    "compact_names",
    "imagenet_weights",
    "init_model",
    "load_coco",
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
    """The preset a checkpoint (or run folder) holds: ``--init``'s default ``--model``
    (from its metadata alone; :func:`check_finetune` reads the whole file)."""
    try:
        meta = read_metadata(resolve_checkpoint(path, prefer="best"))
    except CheckpointError as e:
        raise CheckpointError(f"--init {e}") from None
    name = (meta.get("config") or {}).get("model")
    return name if name in PRESETS else None


def check_init(path: str | Path) -> None:
    """The checkpoint ``--init`` names, read as every model file is
    (``checkpoint.read_checkpoint``: its metadata and finite weights), so that a diverged
    run is refused before any data is read, not by the training loop. CheckpointError
    starting ``--init``, naming the file."""
    try:
        read_checkpoint(resolve_checkpoint(path, prefer="best"))
    except CheckpointError as e:
        raise CheckpointError(f"--init {e}") from None


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


def load_imagenet_backbone(model: SSD, progress: bool = True) -> LoadReport:
    """Load the backbone's ImageNet weights (torchvision's names) into ``model.backbone``.

    Tensors of the file that the backbone lacks (the classifier) are ignored;
    the backbone's own extra layers and the heads stay as built.
    """
    weights = getattr(model.backbone, "imagenet_weights", None)
    if weights is None:
        raise UsageError(f"--pretrained: {model.config.name} has no ImageNet weights")
    state = read_weights(weights, "--pretrained", progress)
    own = model.backbone.state_dict()
    matched = {k: v for k, v in state.items() if k in own}
    wrong = [k for k, v in matched.items() if v.shape != own[k].shape]
    if wrong or not matched:
        first = f"{wrong[0]} is {tuple(matched[wrong[0]].shape)}" if wrong else "no tensor fits"
        raise CheckpointError(
            f"{weights_file(weights)}: not the {weights} weights of this backbone ({first})"
        )
    model.backbone.load_state_dict({**own, **matched})
    loaded = [f"backbone.{k}" for k in matched]
    kept = [k for k in model.state_dict() if k not in set(loaded)]
    return LoadReport(f"{weights} ({weights_file(weights).name})", loaded, kept)


def load_coco(model: SSD, progress: bool = True) -> LoadReport:
    """torchvision's whole COCO detector put into ``model`` (built from ``coco_config``):
    backbone, extras, box heads and, for 90 classes, the class heads; class heads of
    another class count start afresh, as with ``--init``."""
    if model.config.name not in COCO_WEIGHTS:
        raise UsageError(f"--pretrained coco: {model.config.name} has no COCO weights")
    kept, file = load_coco_weights(model, "--pretrained coco", progress)
    weights = COCO_WEIGHTS[model.config.name]
    loaded = [k for k in model.state_dict() if k not in set(kept)]
    return LoadReport(f"{weights} ({file.name})", loaded, kept)


def _pretrained_weights(cfg: RunConfig) -> WeightsEnum | None:
    """The torchvision weights ``--pretrained`` asks for, or None."""
    if cfg.pretrained == "coco":
        return COCO_WEIGHTS[cfg.model]
    if cfg.pretrained == "imagenet":
        return imagenet_weights(cfg.model)
    return None


# ---------------------------------------------------------------------------- the run's start


def check_finetune(cfg: RunConfig) -> None:
    """UsageError for an ``--init`` / ``--pretrained`` / ``--freeze`` request no run can do;
    then the checkpoint ``--init`` names, checked (:func:`check_init`), and the weights
    file ``--pretrained`` needs, fetched (downloaded once), so that a bad or missing one
    fails in one line before any data is read."""
    pretrained = cfg.pretrained != "none"
    if cfg.init and pretrained:
        raise UsageError("--init and --pretrained: give one (--init already sets the backbone)")
    no_imagenet = cfg.model in PRESETS and imagenet_weights(cfg.model) is None
    if cfg.pretrained == "imagenet" and no_imagenet:
        with_weights = [m for m in PRESETS if imagenet_weights(m) is not None]
        raise UsageError(
            f"--pretrained: --model {cfg.model} has no ImageNet weights "
            f"(models with them: {', '.join(with_weights)}; COCO detectors: --pretrained coco)"
        )
    if cfg.pretrained == "coco":
        _check_coco(cfg)
    if cfg.freeze_epochs and cfg.freeze != "backbone":
        raise UsageError(f"--freeze-epochs {cfg.freeze_epochs}: needs --freeze backbone")
    if cfg.init and not cfg.resume:
        check_init(cfg.init)
    weights = _pretrained_weights(cfg) if cfg.model in PRESETS else None
    if weights is not None and not cfg.resume:
        fetch_weights(weights, "--pretrained", cfg.progress)


def _check_coco(cfg: RunConfig) -> None:
    """``--pretrained coco`` needs a model torchvision trained on COCO, with its anchors."""
    if cfg.model not in COCO_WEIGHTS:
        raise UsageError(
            f"--pretrained coco: --model {cfg.model} has no COCO weights "
            f"(models with them: {', '.join(COCO_WEIGHTS)})"
        )
    if cfg.anchors != "fixed":
        raise UsageError(
            f"--anchors {cfg.anchors}: --pretrained coco keeps COCO's anchors, which its box "
            "heads predict from (leave out --anchors)"
        )
    native = PRESETS[cfg.model]().image_size
    if cfg.model == "ssd300_vgg16" and cfg.image_size not in (None, native):
        raise UsageError(
            f"--image-size {cfg.image_size}: ssd300_vgg16's COCO anchors are laid out for "
            f"{native} px (torchvision's steps); leave out --image-size"
        )


def start_from(model: SSD, cfg: RunConfig) -> LoadReport | None:
    """``--init`` or ``--pretrained`` weights put into a new ``model``; logs one line.

    Does nothing for a resumed run: its checkpoint's weights replace these.
    """
    if cfg.resume or not (cfg.init or cfg.pretrained != "none"):
        return None
    if cfg.init:
        report = load_matching(model, cfg.init)
    elif cfg.pretrained == "coco":
        report = load_coco(model, progress=cfg.progress)
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
