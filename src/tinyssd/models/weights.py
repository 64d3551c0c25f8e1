"""torchvision's published weights: where its cache keeps them, fetching once, reading.

Every weights file (ImageNet backbones for ``--pretrained imagenet``, COCO
detectors for ``--pretrained coco`` and ``coco:NAME``) comes through
torchvision's weights API and cache, ``$TORCH_HOME/hub/checkpoints/<file>``
(default ``~/.cache/torch/hub/checkpoints``). Nothing is downloaded unless a
command asks for those weights; a download is hash-checked (the hash is in the
file's name) and written atomically by ``torch.hub``. Every failure is one
CheckpointError line naming the file, the folder and the URL.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor
from torchvision.models import WeightsEnum

from ..errors import CheckpointError

__all__ = ["fetch_weights", "read_weights", "weights_file"]


def weights_file(weights: WeightsEnum) -> Path:
    """Where torchvision keeps (or would download) the weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


# What torch.load(weights_only=True) refused, within its refusal (the rest of which is
# advice on how to unpickle the file anyway): "Unsupported global: GLOBAL argparse.Namespace
# was not an allowed global", "unsupported GLOBAL posix.mkdir whose module posix is blocked",
# or for a file that is no pickle, "WeightsUnpickler error: Unsupported operand 110".
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*(.+)")
_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


def _unreadable(e: BaseException) -> str:
    """Why a weights file did not load, in a few words: for a pickle of other objects
    than tensors, the object it asks for (never run), not torch's advice to unpickle it."""
    text = str(e)
    refused = _REFUSED_GLOBAL.search(text)
    if isinstance(e, pickle.UnpicklingError) and refused:
        return f"not a weights-only file: its pickle asks for {refused.group(1)}, left unread"
    reason = _UNPICKLER_ERROR.search(text)
    if reason:
        return f"not a readable weights file ({reason.group(1).strip()})"
    if _WEIGHTS_ONLY_REFUSAL in text:
        return "not a weights-only file (torch.load refused it with weights_only=True)"
    return f"not a readable weights file ({_first_line(e)})"


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def fetch_weights(weights: WeightsEnum, option: str, progress: bool = True) -> Path:
    """The cached file of ``weights``, downloaded first (hash-checked) when it is not there.

    ``option`` (``"--pretrained"``, ``"coco:ssd300_vgg16"``) starts the error message:
    CheckpointError, one line, naming the file, its folder and the URL to fetch by hand.
    """
    file = weights_file(weights)
    if file.is_file():
        return file
    found = torch.hub.HASH_REGEX.search(file.name)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        # torch.hub writes to a temporary file and moves it into place once the hash checks
        torch.hub.download_url_to_file(
            weights.url, str(file), found.group(1) if found else None, progress=progress
        )
    except (OSError, RuntimeError, ValueError) as e:
        # URLError and socket errors are OSErrors; a bad hash is a RuntimeError
        raise CheckpointError(
            f"{option}: {file.name} is not in {file.parent} and could not be downloaded "
            f"({_first_line(e)}); download {weights.url} and put it at {file} "
            "(the folder is $TORCH_HOME/hub/checkpoints)"
        ) from None
    return file


def read_weights(weights: WeightsEnum, option: str, progress: bool = True) -> dict[str, Tensor]:
    """torchvision's state dict of ``weights`` (fetched once by :func:`fetch_weights`).

    CheckpointError, one line, when the cached file is not a readable state dict.
    """
    file = fetch_weights(weights, option, progress)
    try:
        state = weights.get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{file}: {_unreadable(e)}; delete it to download it again") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(
            f"{file}: not a readable weights file (no state dict of tensors); "
            "delete it to download it again"
        )
    return state
