"""Face-Detector-1MB, slim and RFB variants (biubug6/Face-Detector-1MB-with-landmark)."""

from deepguard.models.ultraslim.predictor import RFB320Detector, Slim320Detector, load

__all__ = ["RFB320Detector", "Slim320Detector", "load"]
