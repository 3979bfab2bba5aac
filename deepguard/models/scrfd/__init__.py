"""SCRFD-500M (insightface), rebuilt in PyTorch from its ONNX graph."""

from deepguard.models.scrfd.predictor import SCRFD500M, load

__all__ = ["SCRFD500M", "load"]
