"""S3FD face detector (VGG-16, max-out background label); also home of the shared SSD parts."""

from deepguard.models.s3fd.predictor import S3FDDetector, load

__all__ = ["S3FDDetector", "load"]
