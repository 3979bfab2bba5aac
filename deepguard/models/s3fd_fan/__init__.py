"""S3FD as face_alignment and Wav2Lip run it (``s3fd-619a316812.pth``)."""

from deepguard.models.s3fd_fan.predictor import S3FDFanDetector, load

__all__ = ["S3FDFanDetector", "load"]
