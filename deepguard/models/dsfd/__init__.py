"""DSFD face detector (VGG-16, dual shot with FPN + feature enhance modules)."""

from deepguard.models.dsfd.predictor import DSFDDetector, load

__all__ = ["DSFDDetector", "load"]
