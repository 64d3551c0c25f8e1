"""What an image may be, and the one resize to the model's input.

Every predictor (``tinyssd.predict``) accepts the same images: a path, a PIL
image, a uint8 ``Tensor[3, H, W]``, a uint8 ``[H, W, 3]`` NumPy array (RGB, as
PIL and imageio give; ``[H, W]`` grey too), a list or tuple of them, or a 4-D
batch (tensor ``[B, 3, H, W]`` or array ``[B, H, W, 3]``).

    tensors = [to_tensor(im) for im in as_image_list(images)]   # Tensor[3, H, W] each
    batch = torch.stack([resize_image(t, size) for t in tensors])   # Tensor[B, 3, S, S]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

if TYPE_CHECKING:
    from .data.limits import DataLimits

__all__ = ["ImageLike", "as_image_list", "resize_image", "to_tensor"]

ImageLike = str | Path | Image.Image | Tensor | np.ndarray


def as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image or many: a list, a tuple, a 4-D tensor ``[B, 3, H, W]`` or array
    ``[B, H, W, 3]`` -> one entry per image."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    return [images]  # type: ignore[list-item]


def to_tensor(image: ImageLike, limits: DataLimits | None = None) -> Tensor:
    """Any accepted image -> ``Tensor[3, H, W]`` uint8 RGB.

    A path is decoded by :func:`tinyssd.data.base.read_image` (EXIF orientation,
    any mode, at most ``limits.max_pixels``; None: ``DataLimits.from_env()``).
    ValueError for a tensor or array of the wrong dtype or shape, TypeError for
    anything else.
    """
    if isinstance(image, (str, Path)):
        # here, not at the top: tinyssd.data's dataset imports resize_image from this module
        from .data.base import read_image

        return read_image(image, limits)
    if isinstance(image, Image.Image):
        arr = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
        return arr.permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
        ):
            raise ValueError(
                f"image array must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}"
            )
        rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(
                f"image tensor must be uint8 (3, H, W), got {image.dtype} {tuple(image.shape)}"
            )
        return image
    raise TypeError(f"cannot read an image from {type(image).__name__}")


def resize_image(image: Tensor, size: int) -> Tensor:
    """Resize ``Tensor[3, H, W]`` uint8 to ``Tensor[3, size, size]`` uint8 (bilinear)."""
    if image.shape[-2:] == (size, size):
        return image
    out = F.interpolate(
        image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0].round().clamp(0, 255).to(torch.uint8)
