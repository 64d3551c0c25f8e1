"""The run config: one dataclass that ``tinyssd train``'s options are generated from.

Every field of :class:`TrainConfig` is one ``tinyssd train --flag`` (its name
with ``-`` for ``_``), with the help text, choices and default written here
once. Fields whose default is ``None`` and that a recipe sets (``RECIPES``)
take the recipe's value unless given; the resolved config is what
``config.json`` stores under ``"train"``, and ``tinyssd train --config
RUN/config.json`` or ``--resume RUN`` reads it back.
"""

from __future__ import annotations

import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from .errors import UsageError


def option(default: Any, help: str, choices: tuple | None = None, **extra: Any) -> Any:
    """A config field with the help text and choices its CLI option shows."""
    meta = {"help": help, "choices": choices, **extra}
    return field(default=default, metadata=meta)


# What each recipe sets. A recipe value applies where the field is left at None.
RECIPES: dict[str, dict[str, Any]] = {
    # The d2l chapter exactly: TinySSD, SGD 0.2 without momentum, constant rate,
    # CE + masked L1, batch 32, 20 epochs, no augmentation, the chapter's anchors.
    "chapter": {
        "model": "tiny_ssd",
        "epochs": 20,
        "batch_size": 32,
        "min_steps": 0,
        "max_steps": 0,
        "optimizer": "sgd",
        "lr": 0.2,
        "momentum": 0.0,
        "weight_decay": 5e-4,
        "norm_bias_decay": True,
        "schedule": "constant",
        "warmup": 0,
        "ema": 0.0,
        "grad_clip": 0.0,
        "anchors": "fixed",
        "class_prior": 0.0,
        "augment": "none",
        "loss": "chapter",
    },
}
# tinyssd's recipe (docs/ABLATION.md measures each part): the strided-conv FPN
# network with anchors fitted to the data, AdamW with warm-up and cosine decay,
# no decay on BatchNorm/bias, focal + GIoU loss, flips; at least 1000 steps (small sets
# need the updates: BCCD's 205 images reach val AP 0.422 with 1000, 0.402 with 600).
RECIPES["default"] = {
    "model": "tiny_fpn",
    "epochs": 40,
    "min_steps": 1000,
    "max_steps": 4000,
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 3e-3,
    "momentum": 0.9,
    "weight_decay": 0.05,
    "norm_bias_decay": False,
    "schedule": "cosine",
    "warmup": 30,
    "ema": 0.0,
    "grad_clip": 0.0,
    "anchors": "auto",
    "class_prior": 0.01,
    "augment": "flip",
    "loss": "focal_giou",
}


@dataclass
class TrainConfig:
    """What ``tinyssd train`` was asked to do; written to ``config.json``."""

    data: str | None = option(None, "data folder; default: the built-in synthetic data set")
    format: str = option("auto", "data layout", choices=("auto", "bananas", "voc", "coco", "yolo"))
    recipe: str = option(
        "default",
        "training recipe whose values fill the options not given",
        choices=tuple(RECIPES),
    )
    model: str | None = option(None, "network preset (tiny_ssd, ssd300_vgg16, ...)")
    epochs: int | None = option(None, "passes over the training set")
    min_steps: int | None = option(
        None,
        "at least this many steps: small data sets get more epochs (0: epochs decide; "
        "an explicit --epochs alone means exactly that many)",
    )
    max_steps: int | None = option(
        None, "at most this many steps: large data sets get fewer epochs (0: no limit)"
    )
    batch_size: int | None = option(None, "images per step")
    optimizer: str | None = option(
        None, "optimiser (AdamW's beta1 is --momentum)", choices=("sgd", "nesterov", "adamw")
    )
    lr: float | None = option(None, "peak learning rate")
    momentum: float | None = option(None, "SGD momentum (the chapter uses none)")
    weight_decay: float | None = option(None, "weight decay")
    norm_bias_decay: bool | None = option(
        None, "weight decay on BatchNorm and bias parameters too (the chapter's way)"
    )
    schedule: str | None = option(
        None, "learning-rate decay over the steps", choices=("cosine", "step", "constant")
    )
    warmup: int | None = option(None, "steps of linear learning-rate warm-up")
    ema: float | None = option(
        None, "decay of the weights' moving average used to evaluate and save (0: off)"
    )
    grad_clip: float | None = option(None, "clip the gradient norm to this (0: off)")
    image_size: int | None = option(None, "square input side in pixels; default: the model's")
    anchors: str | None = option(
        None,
        "auto: anchor sizes and ratios fitted to the training boxes; fixed: the model's",
        choices=("auto", "fixed"),
    )
    class_prior: float | None = option(
        None, "start every object class at this probability (focal loss; 0: zero biases)"
    )
    augment: str | None = option(
        None,
        "none, flip, ssd (the paper's four parts), a comma list of photometric,expand,crop,"
        "flip, or bounded / bounded:PARTS (the parts bounded by the anchors)",
    )
    loss: str | None = option(
        None,
        "chapter (CE + masked L1), ssd, or key=value list, e.g. box=smooth_l1,sigma=1,"
        "cls=focal,gamma=2,alpha=0.25,neg_pos=3,cls_weight=1,box_weight=1,normalize=positives",
    )
    out: str | None = option(
        None, "run folder (default: the first free runs/train, runs/train2, ...)"
    )
    exist_ok: bool = option(False, "allow --out to be an existing non-empty folder")
    seed: int = option(0, "seed of every random choice (CPU runs repeat bit for bit)")
    resume: str | None = option(
        None, "run folder (its last.safetensors) or checkpoint file to continue from"
    )
    force: bool = option(False, "let --resume change the data folder or the model")
    init: str | None = option(
        None,
        "run folder or checkpoint to start from: every tensor whose name and shape match "
        "is loaded, class heads of another class count are new (no optimiser or epoch state)",
    )
    pretrained: bool = option(
        False, "start the backbone from torchvision's ImageNet weights (downloads once)"
    )
    freeze: str = option(
        "none", "train without updating these weights", choices=("none", "backbone")
    )
    freeze_epochs: int = option(
        0, "with --freeze: unfreeze after this many epochs (0: frozen for the whole run)"
    )
    device: str = option("auto", "where to train", choices=("auto", "cpu", "cuda"))
    precision: str = option(
        "auto",
        "autocast for the forward pass: bf16, or fp16 with a gradient scaler (CUDA only); "
        "auto = bf16 where the hardware has it",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    compile: bool = option(False, "torch.compile the model")
    workers: int | None = option(
        None, "data loader worker processes; default: min(4, cores - 1) per process"
    )
    cache: str = option(
        "auto",
        "where decoded images are kept: ram (fastest; must fit), disk (.npy files in "
        "$TINYSSD_CACHE or ~/.cache/tinyssd), none (decoded each time); auto = ram when "
        "they fit min(25%% of available memory, 4 GiB), else none",
        choices=("auto", "ram", "disk", "none"),
    )
    progress: bool = option(True, "show a progress bar")
    stop_ap50: float | None = option(None, "stop once val AP50 reaches this value")
    stop_ap: float | None = option(None, "stop once val COCO AP reaches this value")

    def __post_init__(self) -> None:
        for name in ("data", "out", "resume", "init"):  # Path objects welcome; JSON holds str
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))

    def resolved(self) -> TrainConfig:
        """This config with its recipe's values where a field is None; checked."""
        if self.recipe not in RECIPES:
            raise UsageError(f"--recipe {self.recipe!r}: choose from {', '.join(RECIPES)}")
        filled = {k: v for k, v in RECIPES[self.recipe].items() if getattr(self, k) is None}
        if self.epochs is not None and self.min_steps is None:
            filled["min_steps"] = 0  # epochs given: exactly that many, not the recipe's floor
        if self.epochs is not None and self.max_steps is None:
            filled["max_steps"] = 0  # nor its ceiling
        cfg = replace(self, **filled)
        check(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrainConfig:
        """From ``config.json``'s ``"train"``; keys this version does not know are ignored."""
        known = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in d.items() if k in known})


T = TypeVar("T")


def resolved_value(value: T | None) -> T:
    """A field that every recipe sets, read from a :meth:`TrainConfig.resolved` config."""
    if value is None:
        raise ValueError("a field every recipe sets is None: use TrainConfig.resolved()")
    return value


def check(cfg: TrainConfig) -> None:
    """UsageError, naming the option, for a value no run can use."""
    positive = ("epochs", "batch_size", "image_size", "lr")
    for name in positive:
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise UsageError(f"--{flag(name)} {value}: must be > 0")
    nonnegative = (
        "momentum",
        "weight_decay",
        "workers",
        "warmup",
        "min_steps",
        "max_steps",
        "grad_clip",
    )
    for name in (*nonnegative, "freeze_epochs"):
        value = getattr(cfg, name)
        if value is not None and value < 0:
            raise UsageError(f"--{flag(name)} {value}: must be >= 0")
    if cfg.ema is not None and not 0 <= cfg.ema < 1:
        raise UsageError(f"--ema {cfg.ema}: must be in [0, 1)")
    for f in fields(TrainConfig):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise UsageError(f"--{flag(f.name)} {value!r}: choose from {', '.join(choices)}")


def flag(name: str) -> str:
    """The CLI option of a field: ``batch_size`` -> ``batch-size``."""
    return name.replace("_", "-")


def field_types() -> dict[str, type]:
    """Each field's value type (``int | None`` -> int), for parsing CLI strings."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = args[0] if args else hint
    return out


def field_default(name: str) -> Any:
    f = {f.name: f for f in fields(TrainConfig)}[name]
    return None if f.default is MISSING else f.default


def read_run_config(path: str | Path) -> dict[str, Any]:
    """The ``"train"`` dict of a run's ``config.json`` (a run folder or the file)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        data = json.loads(p.read_text())
        train = data["train"]
    except FileNotFoundError:
        raise UsageError(f"{p}: no such config file") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{p}: not a tinyssd config.json ({e})") from None
    if not isinstance(train, dict):
        raise UsageError(f"{p}: not a tinyssd config.json (no 'train' section)")
    return train
