"""Anchor boxes: the chapter's ``multibox_prior`` and a cached generator for many maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def cell_box_sizes(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """Widths and heights of the a = n + m - 1 anchors of one cell.

    ``(s_i, r_1)`` for every size, then ``(s_1, r_j)`` for j >= 2; width
    ``s * sqrt(r)``, height ``s / sqrt(r)`` (normalised to the image).

    Returns:
        Tensor[a, 2]: (w, h) in float32.
    """
    s = torch.tensor(list(sizes), dtype=torch.float32)
    r = torch.tensor(list(ratios), dtype=torch.float32).sqrt()
    w = torch.cat((s * r[0], s[0] * r[1:]))
    # reciprocal-then-multiply is how torch evaluates the chapter's `float / tensor`
    h = torch.cat((s / r[0], s[0] * r[1:].reciprocal()))
    return torch.stack((w, h), dim=1)


def grid_anchors(
    height: int,
    width: int,
    sizes: Sequence[float],
    ratios: Sequence[float],
    device: torch.device | str | None = None,
) -> Tensor:
    """Anchors of an ``height x width`` feature map, normalised xyxy.

    Centres at ((j + 0.5) / width, (i + 0.5) / height); cells in row-major
    order, the a anchors of a cell contiguous.

    Returns:
        Tensor[height * width * a, 4].
    """
    wh = cell_box_sizes(sizes, ratios).to(device)  # (a, 2)
    # multiply by the step (not divide by the count) to match the chapter bit for bit
    cy = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * (1.0 / height)
    cx = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * (1.0 / width)
    yy, xx = torch.meshgrid(cy, cx, indexing="ij")
    centres = torch.stack((xx, yy), dim=-1).reshape(-1, 1, 2)  # (h*w, 1, 2)
    half = wh[None] / 2  # (1, a, 2)
    return torch.cat((centres - half, centres + half), dim=-1).reshape(-1, 4)


def multibox_prior(data: Tensor, sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """The chapter's anchor boxes for the feature map ``data``.

    Args:
        data (Tensor[B, C, h, w]): a feature map (only its shape and device are used).
        sizes: n anchor scales, fractions of the image side.
        ratios: m aspect ratios (width / height).
    Returns:
        Tensor[1, h * w * (n + m - 1), 4]: normalised xyxy. Identical to the
        chapter's for square maps; on non-square maps every anchor has area s^2
        of the image (the chapter's anchors carry a stray factor h / w).
    """
    h, w = data.shape[-2:]
    return grid_anchors(h, w, sizes, ratios, device=data.device)[None]


class AnchorGenerator:
    """Anchors for a list of feature maps, cached per (map shapes, device).

    Args:
        sizes: per feature map, its anchor sizes.
        ratios: per feature map, its aspect ratios.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], ratios: Sequence[Sequence[float]]):
        if len(sizes) != len(ratios):
            raise ValueError(f"{len(sizes)} size lists but {len(ratios)} ratio lists")
        self.sizes = [list(s) for s in sizes]
        self.ratios = [list(r) for r in ratios]
        self._cache: dict[tuple, Tensor] = {}

    def num_anchors_per_cell(self) -> list[int]:
        return [len(s) + len(r) - 1 for s, r in zip(self.sizes, self.ratios, strict=True)]

    def __call__(self, shapes: Sequence[tuple[int, int]], device: torch.device | str) -> Tensor:
        """Anchors for feature maps of the given (h, w) shapes.

        Returns:
            Tensor[A, 4]: normalised xyxy, maps concatenated in order.
        """
        key = (tuple(tuple(s) for s in shapes), str(device))
        if key not in self._cache:
            self._cache[key] = torch.cat(
                [
                    grid_anchors(h, w, s, r, device)
                    for (h, w), s, r in zip(shapes, self.sizes, self.ratios, strict=True)
                ]
            )
        return self._cache[key]
