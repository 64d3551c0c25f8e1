"""Anchor boxes: the chapter's ``multibox_prior`` and a cached generator for many maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .boxes import box_iou


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
    step: float | None = None,
    clip: bool = False,
) -> Tensor:
    """Anchors of an ``height x width`` feature map, normalised xyxy.

    Centres at ((j + 0.5) / width, (i + 0.5) / height), or ``(j + 0.5) * step``
    when ``step`` (a fraction of the image) is given, as torchvision's SSD300
    places them (its steps 8..300 px of 300); ``clip`` caps anchor widths and
    heights at 1 (torchvision's ``DefaultBoxGenerator(clip=True)``). Cells in
    row-major order, the a anchors of a cell contiguous.

    Returns:
        Tensor[height * width * a, 4].
    """
    wh = cell_box_sizes(sizes, ratios).to(device)  # (a, 2)
    if clip:
        wh = wh.clamp(max=1.0)
    # multiply by the step (not divide by the count) to match the chapter bit for bit
    cy = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * (step or 1.0 / height)
    cx = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * (step or 1.0 / width)
    yy, xx = torch.meshgrid(cy, cx, indexing="ij")
    centres = torch.stack((xx, yy), dim=-1).reshape(-1, 1, 2)  # (h*w, 1, 2)
    half = wh[None] / 2  # (1, a, 2)
    return torch.cat((centres - half, centres + half), dim=-1).reshape(-1, 4)


def grid_levels(anchors: Tensor) -> list[int]:
    """How many anchors each feature map contributed, read back from ``AnchorGenerator``'s
    order (maps concatenated; within a map, cells row-major): a map ends where the
    (centre y, centre x) sequence steps back.

    Two consecutive 1 x 1 maps share their one centre and are counted as one map
    (ATSS then picks its candidates among both, which is what a single 1 x 1 map
    of their anchors would give).

    Args:
        anchors (Tensor[A, 4] or Tensor[1, A, 4]): normalised xyxy.
    Returns:
        Anchors per map, summing to A.
    """
    anchors = anchors.reshape(-1, 4)
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    tol = 1e-6
    back = (cy[1:] < cy[:-1] - tol) | ((cy[1:] - cy[:-1]).abs() <= tol) & (cx[1:] < cx[:-1] - tol)
    starts = [0, *(back.nonzero()[:, 0] + 1).tolist(), len(anchors)]
    return [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]


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
        steps: per feature map, the distance between anchor centres as a fraction
            of the image; empty: one cell (``grid_anchors``' ``step``).
        clip: cap anchor widths and heights at 1 (``grid_anchors``' ``clip``).
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        ratios: Sequence[Sequence[float]],
        steps: Sequence[float] = (),
        clip: bool = False,
    ):
        if len(sizes) != len(ratios):
            raise ValueError(f"{len(sizes)} size lists but {len(ratios)} ratio lists")
        if steps and len(steps) != len(sizes):
            raise ValueError(f"{len(sizes)} size lists but {len(steps)} steps")
        self.sizes = [list(s) for s in sizes]
        self.ratios = [list(r) for r in ratios]
        self.steps: list[float | None] = list(steps) if steps else [None] * len(sizes)
        self.clip = clip
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
                    grid_anchors(h, w, s, r, device, step, self.clip)
                    for (h, w), s, r, step in zip(
                        shapes, self.sizes, self.ratios, self.steps, strict=True
                    )
                ]
            )
        return self._cache[key]


def box_sizes_and_ratios(wh: Tensor) -> tuple[Tensor, Tensor]:
    """Anchor-style size and ratio of boxes: ``sqrt(w h)`` and ``w / h``.

    Args:
        wh (Tensor[N, 2]): widths and heights, normalised to the image.
    Returns:
        (Tensor[N] sizes, Tensor[N] ratios); ``cell_box_sizes`` inverts them.
    """
    w, h = wh.float().clamp(min=1e-6).unbind(-1)
    return (w * h).sqrt(), w / h


def fit_anchor_sizes(
    wh: Tensor, num_maps: int, sizes_per_map: int, spread: float = 1.0
) -> tuple[tuple[float, ...], ...]:
    """Anchor sizes for each feature map from the training boxes (quantiles).

    The ``n = num_maps * sizes_per_map`` sizes are the box-size quantiles at
    ``(i + 0.5) / n``, smallest first, so every size serves an equal share of
    the boxes; the finest map (the first) takes the smallest. ``spread`` > 1
    widens the ladder geometrically around its centre (a margin for objects
    smaller or larger than any seen in training).

    Example: boxes of sides 0.1, 0.2, 0.4 and 0.8 in equal numbers, 2 maps of
    2 sizes -> ((0.1, 0.2), (0.4, 0.8)).

    Args:
        wh (Tensor[N, 2]): box widths and heights, normalised to the image.
    Returns:
        ``num_maps`` tuples of ``sizes_per_map`` sizes (the ``SSDConfig.sizes`` form).
    """
    if len(wh) == 0:
        raise ValueError("fit_anchor_sizes: no boxes to fit anchors to")
    sizes, _ = box_sizes_and_ratios(wh)
    n = num_maps * sizes_per_map
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    ladder = torch.quantile(sizes.double(), q)
    if spread != 1.0:
        log_ladder = ladder.log()
        mid = log_ladder.mean()
        ladder = (mid + (log_ladder - mid) * spread).exp()
    clamped = ladder.clamp(1e-3, 1.0).tolist()
    return tuple(
        tuple(round(s, 4) for s in clamped[k * sizes_per_map : (k + 1) * sizes_per_map])
        for k in range(num_maps)
    )


def fit_anchor_ratios(wh: Tensor, num_ratios: int) -> tuple[float, ...]:
    """Aspect ratios (w / h) from the training boxes: log-ratio quantiles.

    The first ratio is the median (the chapter's scheme pairs it with every
    size), then the quantiles at ``(i + 0.5) / (num_ratios - 1)``.

    Args:
        wh (Tensor[N, 2]): box widths and heights.
    Returns:
        ``num_ratios`` ratios, the median first.
    """
    _, ratios = box_sizes_and_ratios(wh)
    log_r = ratios.double().log()
    out = [log_r.median()]
    if num_ratios > 1:
        q = (torch.arange(num_ratios - 1, dtype=torch.float64) + 0.5) / (num_ratios - 1)
        out += list(torch.quantile(log_r, q))
    return tuple(round(float(torch.as_tensor(r).exp()), 4) for r in out)


def anchor_miss_rate(anchors: Tensor, boxes: Tensor, iou_threshold: float = 0.5) -> float:
    """Share of ground-truth boxes whose best anchor has IoU < ``iou_threshold``.

    Such boxes get only the one anchor the matching forces on them, whatever
    its overlap: a high share says the anchors do not fit the data.

    Args:
        anchors (Tensor[A, 4]): normalised xyxy (e.g. a model's anchors).
        boxes (Tensor[N, 4]): normalised xyxy, all training boxes.
    Returns:
        The share in [0, 1] (0.0 for no boxes).
    """
    if len(boxes) == 0:
        return 0.0
    best = torch.cat(
        [box_iou(chunk, anchors.float()).amax(dim=1) for chunk in boxes.float().split(1024)]
    )
    return float((best < iou_threshold).float().mean())
