"""Checkpoints: one ``.safetensors`` file holding weights, optimiser, epoch, RNG and config.

Tensors go in the safetensors body under prefixes (``model.``, ``train.``,
``optim.``, ``rng.``); everything else (epoch, config, optimiser
hyper-parameters, Python and NumPy RNG states, metric history) is JSON in the
header's metadata. Files are written atomically (``files.atomic_path``), so a
crash at any moment leaves the previous checkpoint intact.

This module is the format, readable without the training package:
``tinyssd.load`` and the exporter read with :func:`read_checkpoint`; training
writes with :func:`save_checkpoint` and resumes with :func:`restore`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from .errors import CheckpointError
from .files import atomic_path


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
    """(tensors, metadata) of a checkpoint; CheckpointError naming the file if it is not one."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    return tensors, meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata (epoch, config, extra) without reading its tensors;
    CheckpointError naming the file if it is not a tinyssd checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    if "tinyssd" not in header:
        raise CheckpointError(f"{path}: not a tinyssd checkpoint (no tinyssd metadata)")
    return json.loads(header["tinyssd"])


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
