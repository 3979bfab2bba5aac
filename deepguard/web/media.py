"""What an uploaded file really is, judged by its bytes, and single frames for the compare view.

The name a browser sends is only metadata: the type comes from the file's magic bytes and is
then confirmed by decoding it, so a renamed executable or a truncated clip is refused at
upload, with a message the dashboard can show.
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from deepguard.errors import InputError
from deepguard.stages.decode import VideoSource
from deepguard.stages.image_io import read_image
from deepguard.stages.video_io import VIDEO_SUFFIXES, media_error, probe_video, to_display

log = logging.getLogger(__name__)

#: ISO base media brands that mean QuickTime rather than MP4
_QUICKTIME_BRANDS = (b"qt  ",)
#: top-level atoms an old QuickTime file may start with (no ``ftyp``)
_QUICKTIME_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


@dataclass(frozen=True)
class MediaInfo:
    """An accepted upload: its real type and the figures the estimate and the UI need."""

    kind: str  # image or video
    suffix: str  # the extension it is stored under, from its content
    width: int  # display size
    height: int
    frames: int
    fps: float | None
    duration_s: float | None
    has_audio: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sniff(head: bytes) -> tuple[str, str] | None:
    """(kind, suffix) from a file's first bytes, or None for anything we do not accept."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image", ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", ".png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", ".webp"
    if head[4:8] == b"ftyp":
        return "video", ".mov" if head[8:12] in _QUICKTIME_BRANDS else ".mp4"
    if head[4:8] in _QUICKTIME_ATOMS:
        return "video", ".mov"
    return None


def inspect(path: Path, max_pixels: int) -> MediaInfo:
    """Decode ``path`` (named by :func:`sniff`) to trust it; raise InputError if not.

    Uploads are hostile bytes: whatever a decoder raises on them (a SyntaxError from
    Pillow's EXIF parser, say) refuses the file, and the server's log keeps the traceback.
    """
    try:
        return _inspect(path, max_pixels)
    except InputError:
        raise
    except Exception as error:
        log.warning("%s: refused after a decoder error", path, exc_info=True)
        raise InputError(f"{path.name}: not a readable file ({type(error).__name__})") from None


def _inspect(path: Path, max_pixels: int) -> MediaInfo:
    if path.suffix in VIDEO_SUFFIXES:
        source = VideoSource(path, max_pixels)
        frames = source.validate()  # every frame decodes: a cut or damaged clip goes here
        info = source.info
        width, height = (
            (info.height, info.width) if info.rotation % 180 else (info.width, info.height)
        )
        return MediaInfo(
            "video",
            path.suffix,
            width,
            height,
            frames,
            info.fps or None,
            info.duration_s,
            info.audio_streams > 0,
        )
    still = read_image(path, max_pixels)
    height, width = still.rgb.shape[:2]
    return MediaInfo("image", path.suffix, width, height, 1, None, None, False)


def frame_rgb(path: Path, index: int, max_pixels: int) -> np.ndarray:
    """Frame ``index`` of a clip (display orientation), or the image itself for index 0.

    Frames are found by time (index / frame rate) after a keyframe seek, so the original and
    the protected clip, which share every timestamp, give the same frame quickly.
    """
    if path.suffix not in VIDEO_SUFFIXES:
        if index != 0:
            raise InputError("an image has only frame 0")
        return read_image(path, max_pixels).rgb
    info = probe_video(path, max_pixels)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or Fraction(25)
            start = stream.start_time or 0
            target = start + int(Fraction(index) / rate / stream.time_base)
            half_frame = int(Fraction(1, 2) / rate / stream.time_base)
            container.seek(target, stream=stream, backward=True, any_frame=False)
            chosen = None
            for frame in container.decode(stream):
                chosen = frame
                if frame.pts is not None and frame.pts >= target - half_frame:
                    break
    except av.FFmpegError as error:
        raise media_error(path, error) from None
    if chosen is None:
        raise InputError(f"{path.name}: no frame {index}")
    return to_display(chosen.to_ndarray(format="rgb24")[None], info.rotation)[0]


def png_bytes(rgb: np.ndarray) -> bytes:
    """Lossless, so the dashboard's difference heatmap shows the real perturbation."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
