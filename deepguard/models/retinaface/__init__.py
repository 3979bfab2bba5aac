"""RetinaFace-MobileNet-0.25 (biubug6/Pytorch_Retinaface)."""

from deepguard.models.retinaface.predictor import RetinaFaceDetector, load

__all__ = ["RetinaFaceDetector", "load"]
