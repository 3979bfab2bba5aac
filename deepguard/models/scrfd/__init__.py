"""SCRFD-500M (insightface), rebuilt in PyTorch from its ONNX graph."""

from deepguard.models.scrfd.predictor import SCRFDDetector, load

__all__ = ["SCRFDDetector", "load"]
