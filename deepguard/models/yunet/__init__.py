"""YuNet (OpenCV zoo), rebuilt in PyTorch from its ONNX graph."""

from deepguard.models.yunet.predictor import YuNet, load

__all__ = ["YuNet", "load"]
