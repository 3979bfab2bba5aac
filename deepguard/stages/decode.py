"""The decode stage: open an input and hand its frames on, one chunk at a time.

A still image is a one-frame video: :class:`ImageSource` yields a single chunk, so images and
clips flow through the same stages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepguard.errors import InputError
from deepguard.stages.image_io import IMAGE_SUFFIXES, StillImage, read_image


@dataclass
class Chunk:
    """Consecutive frames of one input (N×H×W×3 uint8 RGB) and where they start."""

    start: int
    frames: np.ndarray


class ImageSource:
    """An image file as a one-frame source."""

    kind = "image"

    def __init__(self, path: Path, max_pixels: int) -> None:
        self.path = path
        self.still: StillImage = read_image(path, max_pixels)

    def chunks(self) -> Iterator[Chunk]:
        yield Chunk(0, self.still.rgb[None])


def open_source(path: Path, max_pixels: int) -> ImageSource:
    """The right source for ``path``, or an :class:`InputError` that says why not."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource(path, max_pixels)
    raise InputError(
        f"{path.name}: unsupported file type {path.suffix or '(none)'}; "
        f"deepguard protects JPEG, PNG and WebP images"
    )
