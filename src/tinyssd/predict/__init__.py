"""Using a trained model: one interface, two backends, one output writer.

    det = tinyssd.predict.load("runs/bananas")   # Detector; for a .onnx file, OnnxDetector
    det.predict("photo.jpg", threshold=0.5)      # [{"boxes", "scores", "labels", "names"}]

- ``base.py``: the :class:`Predictor` interface and the input batch both backends build;
- ``detector.py``: :class:`Detector` (torch) and :func:`load`;
- ``onnx_detector.py``: :class:`OnnxDetector` (onnxruntime, a ``tinyssd export`` graph);
- ``output.py``: a prediction as a JSON line and as a drawn picture.
"""

from .base import Predictor
from .detector import Detector, load, load_onnx
from .onnx_detector import OnnxDetector
from .output import detection_line, write_picture

__all__ = [
    "Detector",
    "OnnxDetector",
    "Predictor",
    "detection_line",
    "load",
    "load_onnx",
    "write_picture",
]
