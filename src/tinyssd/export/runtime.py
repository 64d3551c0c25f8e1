"""``tinyssd.export.runtime.OnnxDetector`` (the name the README gives): the onnxruntime
predictor, defined in ``tinyssd.predict.onnx_detector``."""

from ..predict.onnx_detector import OnnxDetector

__all__ = ["OnnxDetector"]
