"""FaceBoxes face detector (zisianw/FaceBoxes.PyTorch weights)."""

from deepguard.models.faceboxes.predictor import FaceBoxes, load

__all__ = ["FaceBoxes", "load"]
