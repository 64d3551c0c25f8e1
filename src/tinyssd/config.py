"""The run config in two types: what was asked, and what the run uses.

    asked = TrainConfig(data="data/bananas", epochs=3)   # recipe fields left at None
    cfg = asked.resolved()    # RunConfig: frozen, the recipe's values filled in, checked

Every field of :class:`TrainConfig` is one ``tinyssd train --flag`` (its name
with ``-`` for ``_``), with the help text, choices and default written here
once. Fields whose default is ``None`` and that a recipe sets (``RECIPES``)
take the recipe's value unless given. :class:`RunConfig` has the same fields,
none of a recipe's None: it is what training reads and what ``config.json``
stores under ``"train"``; ``tinyssd train --config RUN/config.json`` or
``--resume RUN`` reads that back as a TrainConfig.
"""

from __future__ import annotations

import difflib
import json
import logging
import reprlib
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DataError, UsageError
from .options import (
    ASSIGNERS,
    DEVICES,
    FORMAT_CHOICES,
    MODEL_NAMES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    check_options,
    flag,
    option,
)

if TYPE_CHECKING:
    from .models.config import SSDConfig

PRETRAINED = ("none", "imagenet", "coco")  # --pretrained: which torchvision weights to start from

log = logging.getLogger("tinyssd")

# --val-interval 0 (auto): runs of up to this many epochs evaluate val after each one;
# longer ones (a small data set given the step floor's epochs) about this many times
VAL_EPOCHS = 50

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
        "assigner": "max_iou",
        "patience": 0,
        "val_interval": 0,
        "tile": 0,
    },
}
# tinyssd's recipe (docs/ABLATION.md measures each part): the strided-conv FPN
# network with anchors fitted to the data, AdamW with warm-up and cosine decay,
# no decay on BatchNorm/bias, quality focal + GIoU loss (val AP, focal -> quality focal:
# BCCD 0.491 -> 0.497, AP75 0.470 -> 0.520; bananas 0.861 -> 0.875; synthetic 0.677 ->
# 0.709), flips, ATSS assignment with 18 candidates a map (matching.ATSS_TOPK; BCCD val
# AP 0.491 / AP75 0.470 with ATSS, 0.422 / 0.354 with the chapter's rule); at least 500
# steps (small sets need the updates; BCCD, bench/ablation.py: val AP 0.488 / AP75 0.488
# in 1.8 train-minutes with 500, 0.496 / 0.503 in 3.9 with 1000: half the minutes for
# 0.008 AP).
RECIPES["default"] = {
    "model": "tiny_fpn",
    "epochs": 40,
    "min_steps": 500,
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
    "loss": "qfl_giou",
    "assigner": "atss",
    "patience": 0,
    "val_interval": 0,
    # large images with small objects are cut into tiles; any other data set is not
    # (data.tiles.choose_tile: images >= 3x the input, median box < 1/16 of the side)
    "tile": "auto",
}


@dataclass
class TrainConfig:
    """What ``tinyssd train`` was asked to do: a recipe field left at None takes the recipe's
    value when :meth:`resolved`."""

    data: str | None = option(None, "data folder; default: the built-in synthetic data set")
    format: str = option("auto", "data layout", choices=FORMAT_CHOICES)
    recipe: str = option(
        "default",
        "training recipe whose values fill the options not given",
        choices=tuple(RECIPES),
    )
    model: str | None = option(None, f"network preset: {', '.join(MODEL_NAMES)}")
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
        None, "optimiser (AdamW's beta1 is --momentum)", choices=OPTIMIZERS
    )
    lr: float | None = option(None, "peak learning rate")
    momentum: float | None = option(None, "SGD momentum (the chapter uses none)")
    weight_decay: float | None = option(None, "weight decay")
    norm_bias_decay: bool | None = option(
        None, "weight decay on BatchNorm and bias parameters too (the chapter's way)"
    )
    schedule: str | None = option(None, "learning-rate decay over the steps", choices=SCHEDULES)
    warmup: int | None = option(None, "steps of linear learning-rate warm-up")
    ema: float | None = option(
        None, "decay of the weights' moving average used to evaluate and save (0: off)"
    )
    grad_clip: float | None = option(None, "clip the gradient norm to this (0: off)")
    image_size: str | int | None = option(
        None,
        "square input side in pixels, or auto: the smallest at which the training set's small "
        "boxes (10th percentile) span 2 cells of the finest feature map, from the model's size "
        "up to 2x its pixels (the model's on tiles); default: the model's",
    )
    tile: str | int | None = option(
        None,
        "train on SIZE x SIZE tiles of the images cut at native resolution and predict by "
        "tiles + the whole image (large images, small objects); auto: when the training "
        "images are >= 3x the input and their boxes small; 0: off (default: auto; the chapter "
        "recipe: 0)",
    )
    tile_overlap: float = option(0.2, "share of a tile that neighbouring tiles overlap")
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
    assigner: str | None = option(
        None,
        "which anchors learn a box: max_iou (IoU >= 0.5, then each box's best: the chapter's) "
        "or atss (per box, a threshold from the IoUs of its 18 nearest anchors on every map)",
        choices=ASSIGNERS,
    )
    patience: int | None = option(
        None, "stop when val AP has not improved for this many epochs (0: never)"
    )
    val_interval: int | None = option(
        None,
        "evaluate val every N epochs and at the last (0: auto: every epoch in runs of up to "
        f"{VAL_EPOCHS} epochs; longer runs every ceil(epochs/{VAL_EPOCHS}) epochs and each "
        "epoch of the last tenth)",
    )
    out: str | None = option(
        None, "run folder (default: the first free runs/train, runs/train2, ...)"
    )
    exist_ok: bool = option(False, "allow --out to be an existing non-empty folder")
    seed: int = option(0, "seed of every random choice (CPU runs repeat bit for bit)")
    val_fraction: float | None = option(
        None,
        "split this share of the training images off as val, for data whose val split is "
        "its training split (a flat VOC folder); seeded by --seed, stratified by class "
        "(default: off)",
    )
    resume: str | None = option(
        None, "run folder (its last.safetensors) or checkpoint file to continue from"
    )
    force: bool = option(False, "let --resume change the data folder or the model")
    init: str | None = option(
        None,
        "run folder or checkpoint to start from: every tensor whose name and shape match "
        "is loaded, class heads of another class count are new (no optimiser or epoch state)",
    )
    pretrained: str = option(
        "none",
        "start from torchvision's weights, downloaded once: imagenet (the backbone; the "
        "value when none is given) or coco (the whole detector: ssd300_vgg16, "
        "ssdlite320_mobilenet_v3_large)",
        choices=PRETRAINED,
        nargs="?",
        const="imagenet",
    )
    freeze: str = option(
        "none", "train without updating these weights", choices=("none", "backbone")
    )
    freeze_epochs: int = option(
        0, "with --freeze: unfreeze after this many epochs (0: frozen for the whole run)"
    )
    device: str = option("auto", "where to train", choices=DEVICES)
    precision: str = option(
        "auto",
        "autocast for the forward pass: bf16, or fp16 with a gradient scaler (CUDA only); "
        "auto = bf16 where the hardware has it",
        choices=PRECISIONS,
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
    tensorboard: bool = option(
        False,
        "also log the epochs and the val picture as TensorBoard event files in the run folder "
        "(pip install 'tinyssd[tensorboard]')",
    )
    stop_ap50: float | None = option(None, "stop once val AP50 reaches this value")
    stop_ap: float | None = option(None, "stop once val COCO AP reaches this value")

    def __post_init__(self) -> None:
        for name in ("data", "out", "resume", "init"):  # Path objects welcome; JSON holds str
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))
        if isinstance(self.pretrained, bool):  # config.json before --pretrained took a value
            self.pretrained = "imagenet" if self.pretrained else "none"
        self.image_size = _image_size_value(self.image_size)

    def resolved(self) -> RunConfig:
        """The run's config: the recipe's values where a field is None, a new run folder
        (``runs/train``, ``runs/train2``, ...) when ``out`` is None; checked."""
        if self.recipe not in RECIPES:
            raise UsageError(f"--recipe {self.recipe!r}: choose from {', '.join(RECIPES)}")
        values = self.to_dict()
        if self.pretrained == "coco" and self.anchors is None:
            values["anchors"] = "fixed"  # COCO's box heads predict from COCO's anchors
        values.update({k: v for k, v in RECIPES[self.recipe].items() if values[k] is None})
        if self.epochs is not None and self.min_steps is None:
            values["min_steps"] = 0  # epochs given: exactly that many, not the recipe's floor
        if self.epochs is not None and self.max_steps is None:
            values["max_steps"] = 0  # nor its ceiling
        if self.out is None:
            from .engine.run_folder import new_run_dir

            values["out"] = str(new_run_dir())
        size = values["image_size"]
        if isinstance(size, str) and size != "auto":
            raise UsageError(f"--image-size {size!r}: a size in pixels, or auto")
        values["image_size"] = None if size == "auto" else size  # --tile auto: the model's size
        check(RunConfig(**{**values, "tile": 0}))  # before --tile auto reads the data
        tile = _resolved_tile(values)
        if size == "auto":
            values["image_size"] = _resolved_image_size(values, tile)
        return RunConfig(**{**values, "tile": tile})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any], source: str | Path = "config.json") -> TrainConfig:
        """From ``config.json``'s ``"train"``; keys this version does not know are ignored
        (a run of another version resumes); a value of the wrong type is a UsageError
        naming ``source`` (the file) and the key."""
        hints = typing.get_type_hints(TrainConfig)
        known = {k: v for k, v in d.items() if k in hints}
        for key, value in known.items():
            kinds = typing.get_args(hints[key]) or (hints[key],)
            kinds += _OLD_TYPES.get(key, ())
            if not any(_has_type(value, kind) for kind in kinds):
                *others, last = [_TYPE_NAMES[k] for k in kinds if k in _TYPE_NAMES]
                expected = f"{', '.join(others)} or {last}" if others else last
                raise UsageError(f"{source}: key {key!r}: {reprlib.repr(value)} is not {expected}")
        return TrainConfig(**known)


# How a config.json's values are named in its errors, by the field type they miss.
_TYPE_NAMES: dict[type, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    type(None): "null",
}
_OLD_TYPES = {"pretrained": (bool,)}  # config.json before --pretrained took a value
# Other tools' names for TrainConfig's fields, suggested for --config's unknown keys.
_OTHER_NAMES = {"learning_rate": "lr", "lr0": "lr", "imgsz": "image_size"}


def _has_type(value: Any, kind: type) -> bool:
    """``value``, read from JSON, fits a field of type ``kind`` (a bool is not a number
    here, an integer is)."""
    if kind is type(None):
        return value is None
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


@dataclass(frozen=True)
class RunConfig:
    """What a run uses: :meth:`TrainConfig.resolved`, field for field (their help is there).

    Frozen: the run reads it and never changes it; what the run derives from
    the data (the epochs of the step budget, the fitted anchors) lives apart.
    """

    data: str | None  # None: the built-in synthetic data set
    format: str
    recipe: str
    model: str
    epochs: int  # asked; the step budget (min_steps, max_steps) may change the run's
    min_steps: int
    max_steps: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    norm_bias_decay: bool
    schedule: str
    warmup: int
    ema: float
    grad_clip: float
    image_size: int | None  # None: the model's own (--image-size auto resolved)
    tile: int  # tile side in source pixels; 0: whole images (--tile auto resolved)
    tile_overlap: float
    anchors: str
    class_prior: float
    augment: str
    loss: str
    assigner: str
    patience: int
    val_interval: int  # 0: auto (engine.schedule.validates)
    out: str  # the run folder
    exist_ok: bool
    seed: int
    val_fraction: float | None  # share of the training images split off as val; None: off
    resume: str | None
    force: bool
    init: str | None
    pretrained: str  # none, imagenet or coco
    freeze: str
    freeze_epochs: int
    device: str
    precision: str
    compile: bool
    workers: int | None  # None: engine.inputs.default_workers() of the machine that runs it
    cache: str
    progress: bool
    tensorboard: bool
    stop_ap50: float | None
    stop_ap: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(cfg: RunConfig) -> None:
    """UsageError, naming the option, for a value no run can use."""
    check_options(cfg)  # NaN and infinities
    for name in ("epochs", "batch_size", "image_size", "lr"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise UsageError(f"--{flag(name)} {value}: must be > 0")
    check_image_size(cfg.model, cfg.image_size)
    nonnegative = (
        "momentum",
        "weight_decay",
        "workers",
        "warmup",
        "min_steps",
        "max_steps",
        "grad_clip",
        "freeze_epochs",
        "patience",
        "val_interval",
    )
    for name in nonnegative:
        value = getattr(cfg, name)
        if value is not None and value < 0:
            raise UsageError(f"--{flag(name)} {value}: must be >= 0")
    if cfg.val_fraction is not None and not 0 <= cfg.val_fraction < 1:
        raise UsageError(f"--val-fraction {cfg.val_fraction}: must be in [0, 1)")
    if not 0 <= cfg.ema < 1:
        raise UsageError(f"--ema {cfg.ema}: must be in [0, 1)")
    if not 0 <= cfg.tile_overlap < 1:
        raise UsageError(f"--tile-overlap {cfg.tile_overlap}: must be in [0, 1)")
    for f in fields(TrainConfig):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value not in choices:
            raise UsageError(f"--{flag(f.name)} {value!r}: choose from {', '.join(choices)}")


def check_image_size(model: str, image_size: int | None) -> None:
    """UsageError when ``--image-size`` is below what ``model``'s strides need
    (``models.config.MIN_IMAGE_SIZES``): its feature maps would be one pixel or none."""
    from .models.config import MIN_IMAGE_SIZES

    least = MIN_IMAGE_SIZES.get(model)  # an unknown model is refused by name elsewhere
    if image_size is not None and least is not None and image_size < least:
        raise UsageError(
            f"--image-size {image_size}: {model} needs at least {least} "
            "(smaller inputs shrink its feature maps to one pixel or less)"
        )


def _resolved_tile(values: dict[str, Any]) -> int:
    """``--tile``'s side in pixels, 0 for none: ``auto`` decided from the training set
    (:func:`tinyssd.data.tiles.auto_tile`, logged in one line)."""
    tile = values["tile"]
    if tile is None or str(tile).strip().lower() in ("0", "off", "none"):
        return 0
    if str(tile).strip().lower() != "auto":
        try:
            side = int(tile)
        except ValueError:
            raise UsageError(f"--tile {tile!r}: a size in pixels, auto or 0 (off)") from None
        if side < 0:
            raise UsageError(f"--tile {tile}: must be >= 0")
        return side
    if values["data"] is None:
        log.info("--tile auto: the built-in synthetic set's images are small: no tiling")
        return 0
    from .data.tiles import auto_tile

    input_size = values["image_size"] or _preset(values["model"]).image_size
    try:
        side, reason = auto_tile(values["data"], values["format"], input_size)
    except DataError as e:
        log.info("--tile auto: no tiling (%s)", e)
        return 0
    log.info("--tile auto: %s", reason)
    return side


def _image_size_value(size: Any) -> Any:
    """``--image-size`` as typed: an integer's text -> the int, any case of ``auto`` ->
    ``"auto"``; other values unchanged (another text is refused when resolved)."""
    if not isinstance(size, str):
        return size
    text = size.strip().lower()
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        return size


def _resolved_image_size(values: dict[str, Any], tile: int) -> int:
    """``--image-size auto``: the smallest input side at which the training set's small
    boxes span two cells of the model's finest map (:func:`tinyssd.data.sizes.auto_image_size`),
    logged in one line; the model's own on tiles (already at native resolution) and on the
    built-in synthetic set."""
    from .data.sizes import auto_image_size, finest_stride

    config = _preset(values["model"])
    default = config.image_size
    if tile:
        log.info(
            "--image-size auto: %d, the model's (--tile %d: tiles are at native resolution)",
            default,
            tile,
        )
        return default
    if values["data"] is None:
        log.info("--image-size auto: %d, the model's (the built-in synthetic set)", default)
        return default
    try:
        size, reason = auto_image_size(
            values["data"], values["format"], default, finest_stride(config)
        )
    except DataError as e:
        log.info("--image-size auto: %d, the model's (%s)", default, e)
        return default
    log.info("--image-size auto: %d (%s)", size, reason)
    return size


def _preset(model: str) -> SSDConfig:
    """The architecture of the preset ``model``; UsageError naming ``--model`` if none."""
    from .models import PRESETS

    if model not in PRESETS:
        raise UsageError(f"--model {model!r}: choose from {', '.join(PRESETS)}")
    return PRESETS[model]()


def resolve_config(overrides: dict[str, Any]) -> RunConfig:
    """The run's config: a resumed run's own settings, then the given ones, then the recipe.

    With ``resume``, a setting given that differs from the run's is logged; a
    different data folder or model is a UsageError unless ``force``. Without,
    ``init``'s network is the default ``model``.
    """
    overrides = dict(overrides)
    force = bool(overrides.pop("force", False))
    resume = overrides.get("resume")
    if not resume:
        if overrides.get("init") and overrides.get("model") is None:
            from .engine.finetune import init_model

            overrides["model"] = init_model(overrides["init"])
        return TrainConfig(**overrides).resolved()
    if not Path(resume).exists():
        raise UsageError(f"--resume {resume}: no such run folder or checkpoint file")
    run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    saved = TrainConfig.from_dict(read_run_config(run_dir), source=_config_file(run_dir))
    given = TrainConfig(**overrides)
    changed = {}
    for name in overrides:
        old = getattr(saved, name)
        new = getattr(given, name)  # normalised (Path -> str)
        if name not in ("resume", "out", "progress") and new is not None and new != old:
            changed[name] = (old, new)
    for name in ("data", "model"):
        if name in changed and not force:
            old, new = changed[name]
            raise UsageError(
                f"--resume {resume}: the run used --{name} {old}, not {new} "
                "(pass --force to change it)"
            )
    for name, (old, new) in changed.items():
        log.info("resume: %s changed from %s to %s", name, old, new)
    kept = {k: v for k, v in saved.to_dict().items() if k not in ("resume", "out", "progress")}
    kept.update({k: v for k, v in given.to_dict().items() if k in overrides})
    kept["resume"], kept["out"] = str(resume), str(run_dir)
    return TrainConfig(**kept).resolved()


def read_config_file(path: str | Path) -> TrainConfig:
    """``--config``: the settings of a run's ``config.json`` (a run folder or the file).

    Unlike a resumed run's own file, a key that is no TrainConfig field is a UsageError
    naming the file, the key and the close match (``epoch``: did you mean ``epochs``?).
    """
    p = _config_file(path)
    train = read_run_config(p)
    names = [f.name for f in fields(TrainConfig)]
    for key in train:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            near = _OTHER_NAMES.get(key) or (close[0] if close else None)
            hint = f"did you mean {near!r}?" if near else "not an option of tinyssd train"
            raise UsageError(f"{p}: unknown key {reprlib.repr(key)} ({hint})")
    return TrainConfig.from_dict(train, source=p)


def _config_file(path: str | Path) -> Path:
    """A run folder's ``config.json``, or ``path`` itself."""
    p = Path(path)
    return p / "config.json" if p.is_dir() else p


def read_run_config(path: str | Path) -> dict[str, Any]:
    """The ``"train"`` dict of a run's ``config.json`` (a run folder or the file)."""
    p = _config_file(path)
    try:
        data = json.loads(p.read_text())
        train = data["train"]
    except FileNotFoundError:
        raise UsageError(f"{p}: no such config file") from None
    except RecursionError:
        raise UsageError(f"{p}: not a tinyssd config.json (nested too deeply)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{p}: not a tinyssd config.json ({e})") from None
    if not isinstance(train, dict):
        raise UsageError(f"{p}: not a tinyssd config.json (no 'train' section)")
    return train
