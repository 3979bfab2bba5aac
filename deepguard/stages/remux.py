"""The remux stage: write the protected frames in the input's format, atomically.

Images are re-encoded in their own format. Videos are encoded with libx264 at the input's
size, pixel format, frame timestamps (variable frame rate survives), rotation and container
metadata; every audio packet is copied untouched, interleaved by time with the new video.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from deepguard.attack.delivery import OutputCodec
from deepguard.errors import InputError
from deepguard.faults import fault_point
from deepguard.fileio import write_atomically
from deepguard.stages.chunk import Chunk
from deepguard.stages.image_io import (
    MAX_SIDE,
    StillImage,
    decode_rgb,
    encode_image,
    output_format,
)
from deepguard.stages.video_io import (
    VIDEO_FORMATS,
    EncoderSettings,
    VideoInfo,
    configure_encoder,
    output_pix_fmt,
    to_stored,
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
        height, width = still.rgb.shape[:2]
        if max(width, height) > MAX_SIDE[self.format]:
            raise InputError(
                f"{path.name}: {self.format} holds at most {MAX_SIDE[self.format]:,} pixels a "
                f"side, and the image is {width}×{height}; use .png"
            )

    @property
    def codec(self) -> OutputCodec:
        """How the file is saved, as the attack models it (lossless unless JPEG)."""
        if self.format != "JPEG":
            return OutputCodec(None)
        return OutputCodec(self.jpeg_quality, self.still.subsampling)

    def _encode(self, rgb: np.ndarray) -> bytes:
        return encode_image(self.still, rgb, self.format, self.jpeg_quality, self.keep_metadata)

    def roundtrip(self, frames: np.ndarray) -> np.ndarray:
        """What a viewer decodes from the saved file (lossy only for JPEG)."""
        if self.format != "JPEG":
            return frames
        return np.stack([decode_rgb(self._encode(frame)) for frame in frames])

    def encode(self, frames: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The file's bytes for the frame, and what a viewer decodes from them."""
        data = self._encode(frames[0])
        return data, decode_rgb(data) if self.format == "JPEG" else frames[0]

    def save(self, data: bytes) -> None:
        """Write the encoded file into place, atomically."""
        write_atomically(self.path, data)
        fault_point("after_rename")


def video_output_format(path: Path, info: VideoInfo) -> str:
    """The container for ``path``: the extension decides, and it must be mp4 or mov."""
    container = VIDEO_FORMATS.get(path.suffix.lower())
    if container is None:
        raise InputError(f"{path.name}: a video is written as .{info.container} (or .mp4/.mov)")
    return container


class VideoSink:
    """Encodes chunks in order into ``partial`` (a temporary file the caller renames).

    The caller owns atomicity: it picks ``partial`` beside the final path, renames it only
    after :meth:`close` and a verification pass, and calls :meth:`abort` on any failure.
    """

    def __init__(
        self, info: VideoInfo, partial: Path, container_format: str, settings: EncoderSettings
    ) -> None:
        self.info = info
        self.partial = partial
        self.frames_written = 0
        self.source = av.open(str(info.path), format=info.container)
        self.output = av.open(str(partial), "w", format=container_format)
        try:
            self.output.metadata.update(self.source.metadata)
            self.video = self._add_video(settings)
            sources = list(self.source.streams.audio)
            self.audio = {s.index: self.output.add_stream_from_template(s) for s in sources}
            for source, copy in zip(sources, self.audio.values(), strict=True):
                copy.metadata.update(source.metadata)
            self._packets: Iterator[av.Packet] = self.source.demux(sources) if sources else iter(())
            self._next_audio = self._pull_audio()
        except BaseException:
            self.abort()
            raise

    def _add_video(self, settings: EncoderSettings) -> av.video.stream.VideoStream:
        info = self.info
        stream = self.output.add_stream("libx264", rate=info.average_rate)
        pix_fmt = output_pix_fmt(info.pix_fmt, info.width, info.height)
        configure_encoder(
            stream.codec_context, info.width, info.height, pix_fmt, info.time_base, settings
        )
        stream.time_base = info.time_base
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        stream.metadata.update(self.source.streams.video[0].metadata)
        return stream

    def _pull_audio(self) -> av.Packet | None:
        for packet in self._packets:
            if packet.size:  # demuxing ends with empty flush packets
                return packet
        return None

    def _mux_audio_until(self, seconds: float | None) -> None:
        """Copy audio packets that play before ``seconds`` (all of them when ``None``)."""
        while self._next_audio is not None:
            packet = self._next_audio
            stamp = packet.dts if packet.dts is not None else packet.pts
            if seconds is not None and stamp is not None and stamp * packet.time_base > seconds:
                return
            packet.stream = self.audio[packet.stream.index]
            self.output.mux(packet)
            self._next_audio = self._pull_audio()

    def _mux_video(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            stamp = packet.dts if packet.dts is not None else packet.pts
            self._mux_audio_until(None if stamp is None else float(stamp * packet.time_base))
            self.output.mux(packet)

    def write(self, chunk: Chunk) -> None:
        """Encode a chunk of protected frames (display orientation) with their timestamps."""
        frames = chunk.protected if chunk.protected is not None else chunk.frames
        stored = to_stored(frames, self.info.rotation)
        for rgb, pts, duration in zip(stored, chunk.pts, chunk.durations, strict=True):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = int(pts)
            frame.duration = int(duration)
            frame.time_base = self.info.time_base
            self._mux_video(self.video.encode(frame))
            self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and the remaining audio, and make the file durable."""
        self._mux_video(self.video.encode(None))
        self._mux_audio_until(None)
        self.output.close()
        self.source.close()
        with self.partial.open("rb") as handle:
            os.fsync(handle.fileno())

    def abort(self) -> None:
        """Give up: close everything and delete the partial file."""
        for container in (self.output, self.source):
            with contextlib.suppress(Exception):  # already failing; cleanup must go on
                container.close()
        self.partial.unlink(missing_ok=True)
