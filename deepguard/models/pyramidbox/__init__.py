"""PyramidBox face detector (VGG-16, low-level FPN + context modules, face branch only)."""

from deepguard.models.pyramidbox.predictor import PyramidBoxDetector, load

__all__ = ["PyramidBoxDetector", "load"]
