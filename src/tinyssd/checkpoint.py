"""Checkpoints: one ``.safetensors`` file holding weights, optimiser, epoch, RNG and config.

Tensors go in the safetensors body under prefixes (``model.``, ``train.``,
``optim.``, ``rng.``); everything else (epoch, config, optimiser
hyper-parameters, Python and NumPy RNG states, metric history) is JSON in the
header's metadata. Files are written atomically (``files.atomic_path``), so a
crash at any moment leaves the previous checkpoint intact.

This module is the format, readable without the training package:
``tinyssd.load`` and the exporter read with :func:`read_model_checkpoint`, ``--init``
with :func:`read_checkpoint`; training writes with :func:`save_checkpoint` and
resumes with :func:`restore`.

It is also the one check of what a model file claims, a checkpoint or an
exported ``.onnx`` graph alike (``predict/onnx_detector.py``): metadata that is a
JSON object, class names (:func:`check_model_claims`), an input size within the
pixel budget, finite weights (:func:`check_finite`). Each failure is one
CheckpointError naming the file, raised before anything is built from the claim.
"""

from __future__ import annotations

import json
import random
import reprlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from .data.limits import MAX_IMAGE_PIXELS
from .errors import CheckpointError
from .files import atomic_path

# Tensors that are weights (the rest: optimiser state, RNG states).
WEIGHT_PREFIXES = ("model.", "train.")


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The torch, CUDA, Python and NumPy RNG states as (tensors, JSON-able)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    # The legacy tuple: the global RandomState is always MT19937 (others give a dict).
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def _flatten_optimizer(state: dict) -> tuple[dict[str, Tensor], dict]:
    tensors: dict[str, Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for idx, param_state in state["state"].items():
        per_param[str(idx)] = {}
        for key, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                per_param[str(idx)][key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": per_param}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(v) for i, v in meta["scalars"].items()}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    epoch: int = 0,
    extra: dict[str, Any] | None = None,
    training_model: torch.nn.Module | None = None,
) -> Path:
    """Write a checkpoint atomically (``files.atomic_path``).

    ``model`` holds the weights to predict with (``model.`` tensors: the EMA
    when training keeps one); ``training_model``, when given, the weights the
    optimiser updates (``train.`` tensors), which ``--resume`` continues from.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    if training_model is not None:
        for k, v in training_model.state_dict().items():
            tensors[f"train.{k}"] = v.detach().contiguous()
    meta: dict[str, Any] = {"epoch": epoch, "config": config, "extra": extra or {}}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update({k: v.contiguous() for k, v in opt_tensors.items()})
    rng_tensors, meta["rng"] = rng_state()
    tensors.update(rng_tensors)
    tensors = {k: v.cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"tinyssd": json.dumps(meta)})
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata) of a checkpoint; CheckpointError naming the file if it is not
    one or if its weights (``model.``, ``train.``) hold NaN or inf."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    check_finite(path, ((k, v) for k, v in tensors.items() if k.startswith(WEIGHT_PREFIXES)))
    return tensors, meta


def read_model_checkpoint(
    path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """:func:`read_checkpoint` of a checkpoint to predict with or start from: its config
    checked too (``classes``, ``num_classes`` and ``ssd.image_size``,
    :func:`check_model_claims`); CheckpointError naming the file."""
    tensors, meta = read_checkpoint(path)
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("ssd"), dict):
        raise CheckpointError(f"{path}: no model config in its metadata (not a model checkpoint)")
    classes, _ = check_model_claims(
        path, config.get("classes"), config["ssd"].get("image_size"), max_pixels
    )
    num_classes = config.get("num_classes")
    if type(num_classes) is not int or num_classes != len(classes):  # not bool, not float
        raise CheckpointError(
            f"{path}: num_classes {reprlib.repr(num_classes)} but {len(classes)} class names"
        )
    return tensors, meta


# the JSON types read_metadata accepts for the keys save_checkpoint writes
_META_TYPES = {
    "epoch": (int, "an integer"),
    "config": (dict, "an object"),
    "extra": (dict, "an object"),
}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata (epoch, config, extra) without reading its tensors;
    CheckpointError naming the file if it is not a tinyssd checkpoint (a pickle from
    ``torch.save`` is named as one, never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    head = b""
    try:
        with path.open("rb") as f:
            head = f.read(4)
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        if _is_pickle(head):
            raise CheckpointError(
                f"{path}: a pickle (torch.save), not a safetensors checkpoint; tinyssd reads "
                "weights only from .safetensors files and never unpickles"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    if "tinyssd" not in header:
        raise CheckpointError(f"{path}: not a tinyssd checkpoint (no tinyssd metadata)")
    meta = decode_json(path, header["tinyssd"], "tinyssd metadata")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: tinyssd metadata is {_json_kind(meta)}, not a JSON object")
    for key, (kind, name) in _META_TYPES.items():
        if key in meta and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
            raise CheckpointError(f"{path}: metadata {key} is {_json_kind(meta[key])}, not {name}")
    return meta


# ---------------------------------------------------------------------------- model claims


def decode_json(path: str | Path, text: str, what: str) -> Any:
    """``text`` (``what`` of the model file ``path``) decoded; CheckpointError if not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError; nesting past the stack
        raise CheckpointError(f"{path}: {what} is not JSON ({e})") from None


def check_model_claims(
    path: str | Path, classes: object, image_size: object, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[list[str], int]:
    """What a model file (checkpoint or ``.onnx``) says it predicts, checked:
    ``(classes, image_size)``.

    ``classes``: a non-empty list of strings (label l is ``classes[l - 1]``);
    ``image_size`` S: an int > 0 with S * S <= ``max_pixels`` (``--max-pixels``),
    since every image is resized to S x S. CheckpointError naming the file otherwise.
    """
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: classes {reprlib.repr(classes)}: not a list of class names")
    if not classes:
        raise CheckpointError(f"{path}: classes []: the model names no class")
    if type(image_size) is not int or image_size <= 0:  # not bool, not float
        raise CheckpointError(
            f"{path}: image_size {reprlib.repr(image_size)}: not a positive integer"
        )
    if image_size * image_size > max_pixels:
        raise CheckpointError(
            f"{path}: image_size {image_size}: {image_size}x{image_size} input is over the "
            f"pixel budget of {max_pixels} (--max-pixels)"
        )
    return list(classes), image_size


def check_finite(path: str | Path, weights: Iterable[tuple[str, Tensor]]) -> None:
    """CheckpointError naming the file and the first tensor of ``weights`` (name, tensor)
    that holds NaN or inf: a diverged run's weights predict nothing, silently."""
    for name, tensor in weights:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "inf"
            raise CheckpointError(
                f"{path}: weights hold {kind} ({name}; the run diverged?); "
                "retrain or use an earlier checkpoint"
            )


def _is_pickle(head: bytes) -> bool:
    """Whether a file's first 4 bytes are torch.save's (a zip) or a pickle's (protocol 2-5)."""
    return head == b"PK\x03\x04" or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5)


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _json_kind(value: object) -> str:
    """JSON's name for the type of a decoded value: ``an object``, ``an array``..."""
    if value is None:
        return "null"
    return _JSON_KINDS.get(type(value), "an integer" if type(value) is int else "a number")


def split_state(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix`` (``"model."``), the prefix taken off their names."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def restore(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    rng: bool = True,
    ema_model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Load weights (and optimiser and RNG states) into place; returns the metadata.

    ``model`` gets the training weights (``train.``, else ``model.``);
    ``ema_model``, when given, the saved ``model.`` weights (the EMA).
    """
    tensors, meta = read_checkpoint(path)
    trained = split_state(tensors, "train.") or split_state(tensors, "model.")
    model.load_state_dict(trained)
    if ema_model is not None:
        ema_model.load_state_dict(split_state(tensors, "model."))
    if optimizer is not None and "optimizer" in meta:
        optimizer.load_state_dict(
            _unflatten_optimizer(split_state(tensors, "optim."), meta["optimizer"])
        )
    if rng:
        set_rng_state(tensors, meta["rng"])
    return meta


def resolve_checkpoint(run_or_file: str | Path, prefer: str = "best") -> Path:
    """A checkpoint file from a run folder, or the file itself.

    In a folder, ``prefer="best"`` (prediction, evaluation) takes
    ``best.safetensors`` else ``last``; ``prefer="last"`` (resuming) takes
    ``last.safetensors`` else ``best``.
    """
    p = Path(run_or_file)
    if p.is_dir():
        order = ("best", "last") if prefer == "best" else ("last", "best")
        for name in order:
            if (p / f"{name}.safetensors").is_file():
                return p / f"{name}.safetensors"
        raise CheckpointError(f"{p}: run folder has no best.safetensors or last.safetensors")
    if not p.is_file():
        raise CheckpointError(f"{p}: no such run folder or checkpoint file")
    return p


def resolve_weights(run_or_file: str | Path) -> Path:
    """The checkpoint to predict with: a run folder's best (else last), or the file itself."""
    return resolve_checkpoint(run_or_file, prefer="best")
