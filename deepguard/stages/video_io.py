"""Video container facts and codec helpers shared by the decode and remux stages (PyAV).

Frames travel through the pipeline in *display* orientation, because face detectors only
work on upright faces; the remux stage turns them back and writes the same display rotation,
so players show the output exactly like the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from deepguard.errors import InputError

#: containers we read and write; the output keeps the input's
VIDEO_FORMATS = {".mp4": "mp4", ".mov": "mov"}
VIDEO_SUFFIXES = frozenset(VIDEO_FORMATS)
#: pixel formats libx264 encodes; anything else is written as yuv420p
X264_PIX_FMTS = frozenset({"yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le",
                           "yuv444p10le"})  # fmt: skip
_FULL_RANGE_ALIASES = {"yuvj420p": "yuv420p", "yuvj422p": "yuv422p", "yuvj444p": "yuv444p"}


@dataclass(frozen=True)
class EncoderSettings:
    """libx264 quality controls. CRF 17 with ``medium`` is visually lossless for most clips.

    No B-frames by default: x264 quantises B-frames hardest, and a protected frame must
    survive the coarsest quantisation it gets; without them, a lone frame encoded a few CRF
    steps harsher (what verification does) bounds what every frame of the clip goes through.
    """

    crf: int = 17
    preset: str = "medium"
    b_frames: int = 0

    def options(self) -> dict[str, str]:
        return {"crf": str(self.crf), "preset": self.preset, "bf": str(self.b_frames)}


@dataclass(frozen=True)
class VideoInfo:
    """What the remux stage must reproduce, read once from the input container."""

    path: Path
    container: str  # mp4 or mov
    codec: str
    width: int  # stored (coded) size, before rotation
    height: int
    pix_fmt: str
    rotation: int  # degrees counter-clockwise to display, a multiple of 90
    time_base: Fraction
    average_rate: Fraction | None
    frames: int  # as indexed by the container; 0 when it does not say
    duration_s: float | None
    audio_streams: int

    @property
    def fps(self) -> float:
        return float(self.average_rate) if self.average_rate else 0.0


def media_error(path: Path, error: Exception) -> InputError:
    """One readable line for anything FFmpeg could not read."""
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return InputError(f"{path.name}: not a readable video ({reason})")


def probe_video(path: Path, max_pixels: int, container_format: str | None = None) -> VideoInfo:
    """Read the container header, or raise :class:`InputError` saying why it cannot be used.

    The container is known from the extension unless given (a partial file being verified).
    """
    container_format = container_format or VIDEO_FORMATS.get(path.suffix.lower())
    if container_format is None:
        raise InputError(f"{path.name}: unsupported video container; use .mp4 or .mov")
    try:
        with av.open(str(path), format=container_format) as container:
            if not container.streams.video:
                raise InputError(f"{path.name}: has no video stream")
            stream = container.streams.video[0]
            context = stream.codec_context
            if context is None:  # FFmpeg has no decoder for the stream's codec tag
                raise InputError(f"{path.name}: the video's codec is unknown")
            width, height = context.width, context.height
            if width <= 0 or height <= 0:
                raise InputError(f"{path.name}: video stream has no picture size")
            if width * height > max_pixels:
                raise InputError(
                    f"{path.name}: {width}×{height} frames exceed the limit of {max_pixels:,} "
                    f"pixels (DEEPGUARD_MAX_IMAGE_PIXELS)"
                )
            rotation = _first_frame_rotation(container, stream)
            duration = float(stream.duration * stream.time_base) if stream.duration else None
            if duration is None and container.duration:
                duration = container.duration / av.time_base
            return VideoInfo(
                path=path,
                container=container_format,
                codec=context.name,
                width=width,
                height=height,
                pix_fmt=context.pix_fmt or "yuv420p",
                rotation=rotation,
                time_base=stream.time_base,
                average_rate=stream.average_rate,
                frames=stream.frames,
                duration_s=duration,
                audio_streams=len(container.streams.audio),
            )
    except InputError:
        raise
    except (av.FFmpegError, ValueError, OSError) as error:
        raise media_error(path, error) from None


def _first_frame_rotation(container: av.container.InputContainer, stream) -> int:
    """The display rotation, which PyAV exposes on decoded frames (side data)."""
    for frame in container.decode(stream):
        return round(frame.rotation / 90.0) * 90 % 360
    raise InputError(f"{Path(container.name).name}: video stream has no decodable frames")


def to_display(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Stored → display orientation (N×H×W×C); ``rotation`` is counter-clockwise degrees."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, turns, axes=(1, 2))) if turns else frames


def to_stored(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Display → stored orientation: the inverse of :func:`to_display`."""
    return to_display(frames, -rotation)


def output_pix_fmt(input_pix_fmt: str, width: int, height: int) -> str:
    """Keep the input's pixel format where libx264 can; 4:2:0 needs even sides, so an
    odd-sized picture keeps every pixel and its size by going to 4:4:4 instead."""
    pix_fmt = _FULL_RANGE_ALIASES.get(input_pix_fmt, input_pix_fmt)
    if pix_fmt not in X264_PIX_FMTS:
        pix_fmt = "yuv420p"
    subsampled_width = pix_fmt.startswith(("yuv420", "yuv422"))
    subsampled_height = pix_fmt.startswith("yuv420")
    if (subsampled_width and width % 2) or (subsampled_height and height % 2):
        pix_fmt = pix_fmt.replace("420", "444").replace("422", "444")
    return pix_fmt


def configure_encoder(
    context: av.VideoCodecContext,
    width: int,
    height: int,
    pix_fmt: str,
    time_base: Fraction,
    settings: EncoderSettings,
) -> None:
    context.width = width
    context.height = height
    context.pix_fmt = pix_fmt
    context.time_base = time_base
    context.options = settings.options()


class H264Roundtrip:
    """Encode frames with the output's settings and decode them again, in memory.

    The attack judges its work on what a viewer will decode: H.264 quantisation removes much
    of a perturbation, so verification must see the codec's effect, not the raw pixels.
    """

    def __init__(self, pix_fmt: str, settings: EncoderSettings) -> None:
        self.pix_fmt = pix_fmt
        self.settings = settings

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        count, height, width = frames.shape[:3]
        encoder = av.CodecContext.create("libx264", "w")
        configure_encoder(encoder, width, height, self.pix_fmt, Fraction(1, 25), self.settings)
        decoder = av.CodecContext.create("h264", "r")
        decoded: list[np.ndarray] = []
        for index, rgb in enumerate([*frames, None]):
            frame = None
            if rgb is not None:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = index
            for packet in encoder.encode(frame):
                decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(packet)]
        decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(None)]
        if len(decoded) != count:
            raise RuntimeError(f"H.264 round trip returned {len(decoded)} of {count} frames")
        return np.stack(decoded)
