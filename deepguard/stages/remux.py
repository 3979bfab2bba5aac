"""The remux stage: write the protected frames in the input's format, atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepguard.errors import InputError
from deepguard.fileio import write_atomically
from deepguard.stages.image_io import (
    StillImage,
    decode_rgb,
    encode_image,
    output_format,
)


class ImageSink:
    """Writes one protected frame as an image; also offers the codec round-trip for verifying."""

    def __init__(
        self, path: Path, still: StillImage, jpeg_quality: int, keep_metadata: bool
    ) -> None:
        self.path = path
        self.still = still
        self.format = output_format(path)
        self.jpeg_quality = jpeg_quality
        self.keep_metadata = keep_metadata
        if still.alpha is not None and self.format == "JPEG":
            raise InputError(
                f"{path.name}: JPEG cannot store the input's transparency; use .png or .webp"
            )

    def _encode(self, rgb: np.ndarray) -> bytes:
        return encode_image(self.still, rgb, self.format, self.jpeg_quality, self.keep_metadata)

    def roundtrip(self, frames: np.ndarray) -> np.ndarray:
        """What a viewer decodes from the saved file (lossy only for JPEG)."""
        if self.format != "JPEG":
            return frames
        return np.stack([decode_rgb(self._encode(frame)) for frame in frames])

    def write(self, frames: np.ndarray) -> np.ndarray:
        """Save the frame; returns what a viewer decodes from the file that was written."""
        data = self._encode(frames[0])
        write_atomically(self.path, data)
        return decode_rgb(data) if self.format == "JPEG" else frames[0]
