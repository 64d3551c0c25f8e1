"""Networks: one SSD class, configured per model by a frozen dataclass."""

from .config import PRESETS, SSDConfig, ssd300_vgg16, tiny_ssd
from .ssd import SSD, TinySSD, build_model

__all__ = ["PRESETS", "SSD", "SSDConfig", "TinySSD", "build_model", "ssd300_vgg16", "tiny_ssd"]
