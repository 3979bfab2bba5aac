"""YOLOv8n-face (FaceFusion's ``yoloface_8n.onnx``)."""

from deepguard.models.yoloface.predictor import YoloFaceDetector, load

__all__ = ["YoloFaceDetector", "load"]
