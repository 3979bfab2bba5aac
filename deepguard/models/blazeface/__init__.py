"""MediaPipe BlazeFace face detectors (front 128 and back 256 variants)."""

from deepguard.models.blazeface.predictor import BlazeFaceBack, BlazeFaceFront, load

__all__ = ["BlazeFaceBack", "BlazeFaceFront", "load"]
