"""RetinaFace with a ResNet-50 body (facexlib's ``detection_Resnet50_Final.pth``)."""

from deepguard.models.retinaface_r50.predictor import RetinaFaceR50Detector, load

__all__ = ["RetinaFaceR50Detector", "load"]
