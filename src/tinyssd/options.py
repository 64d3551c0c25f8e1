"""Settings as small frozen dataclasses, torch-free so that ``tinyssd --help`` stays fast.

Each field is declared with :func:`option`: its default, the help text its
command-line option shows and, where it has them, the values it may take.
``cli.py`` generates every command's options from these fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError


def option(default: Any, help: str, choices: tuple | None = None, **extra: Any) -> Any:
    """A dataclass field with the help text and choices its CLI option shows."""
    meta = {"help": help, "choices": choices, **extra}
    return field(default=default, metadata=meta)


# Names that options take, listed once (the modules that implement them check against these).
FORMAT_NAMES = ("bananas", "voc", "coco", "yolo")  # data layouts, in detection order
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Score a box needs to be reported, drawn or printed (predict, serve, video, pictures)
# when the checkpoint stores no threshold of its own.
DEFAULT_THRESHOLD = 0.5
# Score a candidate needs to be scored by mAP (eval and the val AP after each epoch).
EVAL_SCORE_THRESHOLD = 0.01


@dataclass(frozen=True)
class PostprocessConfig:
    """From scores and boxes to detections: the one home of these knobs, used by predict,
    eval, video, serve and the ONNX export alike."""

    score_threshold: float = option(
        DEFAULT_THRESHOLD, "score a box needs to be reported and drawn"
    )
    nms_threshold: float = option(0.45, "IoU above which NMS removes the lower-scored box")
    topk_candidates: int = option(400, "(anchor, class) pairs per image that go into NMS")
    max_detections: int = option(200, "detections kept per image, the best ones")
    class_agnostic: bool = option(False, "NMS across classes (one box per place)")

    def __post_init__(self) -> None:
        for name in ("score_threshold", "nms_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
                raise UsageError(f"--{name.replace('_', '-')} {value!r}: must be in [0, 1]")
        for name in ("topk_candidates", "max_detections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} {value!r}: must be > 0")
