"""The decode stage: open an input and hand its frames on, one chunk at a time.

A still image is a one-frame video: :class:`ImageSource` yields a single chunk, so images and
clips flow through the same stages. :class:`VideoSource` decodes with PyAV (frame-threaded),
keeps every frame's timestamp and turns frames to display orientation.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from deepguard.errors import InputError
from deepguard.stages.chunk import Chunk
from deepguard.stages.image_io import IMAGE_SUFFIXES, StillImage, read_image
from deepguard.stages.video_io import (
    VIDEO_SUFFIXES,
    VideoInfo,
    media_error,
    probe_video,
    to_display,
)

__all__ = ["Chunk", "ImageSource", "VideoSource", "check_input_file", "open_source"]


class ImageSource:
    """An image file as a one-frame source."""

    kind = "image"

    def __init__(self, path: Path, max_pixels: int) -> None:
        self.path = path
        self.still: StillImage = read_image(path, max_pixels)

    def chunks(self) -> Iterator[Chunk]:
        yield Chunk(0, self.still.rgb[None])


class VideoSource:
    """A video file's first video stream, as chunks of ``chunk_size`` frames."""

    kind = "video"

    def __init__(
        self, path: Path, max_pixels: int, chunk_size: int = 16, container: str | None = None
    ) -> None:
        self.path = path
        check_input_file(path)  # FFmpeg would wait on a FIFO for ever
        self.info: VideoInfo = probe_video(path, max_pixels, container)
        self.chunk_size = chunk_size

    def frames(self) -> Iterator[tuple[np.ndarray, int, int]]:
        """(RGB frame in display orientation, pts, duration) for every frame, in order."""
        decoded = 0
        try:
            with av.open(str(self.path), format=self.info.container) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                previous: av.VideoFrame | None = None
                for frame in container.decode(stream):
                    if previous is not None:
                        yield self._row(previous, frame.pts - previous.pts)
                        decoded += 1
                    previous = frame
                if previous is not None:
                    yield self._row(previous, self._last_duration(previous))
                    decoded += 1
        except av.FFmpegError as error:
            raise media_error(self.path, error) from None
        self._check_count(decoded)

    def validate(self) -> int:
        """Decode every frame once, without converting pixels, and return how many there are.

        Run before any work is spent on a clip, so a corrupt or truncated file is refused in
        one line up front rather than part-way through the pipeline. Decoding alone runs at
        hundreds of frames per second, a small share of what protecting the clip takes.
        """
        decoded = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    if frame.pts is None:
                        raise InputError(f"{self.path.name}: a video frame has no timestamp")
                    decoded += 1
        except (av.FFmpegError, ValueError, OSError) as error:
            raise media_error(self.path, error) from None
        self._check_count(decoded)
        return decoded

    def _check_count(self, decoded: int) -> None:
        """No frames, or fewer than the container lists, means the file was cut or damaged."""
        if decoded == 0 or (self.info.frames and decoded < self.info.frames):
            raise InputError(
                f"{self.path.name}: truncated or corrupt video: decoded {decoded} of "
                f"{self.info.frames or 'an unknown number of'} frames"
            )

    def _row(self, frame: av.VideoFrame, duration: int) -> tuple[np.ndarray, int, int]:
        if frame.pts is None:
            raise InputError(f"{self.path.name}: a video frame has no timestamp")
        rgb = frame.to_ndarray(format="rgb24")
        return to_display(rgb[None], self.info.rotation)[0], int(frame.pts), int(duration)

    def _last_duration(self, frame: av.VideoFrame) -> int:
        if frame.duration:
            return int(frame.duration)
        if self.info.average_rate:
            return max(1, round(1 / (self.info.average_rate * self.info.time_base)))
        return 1

    def chunks(self) -> Iterator[Chunk]:
        start, rows = 0, []
        for row in self.frames():
            rows.append(row)
            if len(rows) == self.chunk_size:
                yield _chunk(start, rows)
                start, rows = start + len(rows), []
        if rows:
            yield _chunk(start, rows)


def _chunk(start: int, rows: list[tuple[np.ndarray, int, int]]) -> Chunk:
    frames, pts, durations = zip(*rows, strict=True)
    return Chunk(start, np.stack(frames), np.array(pts, np.int64), np.array(durations, np.int64))


def check_input_file(path: Path) -> None:
    """Refuse what is not a readable regular file before anything opens it: reading a FIFO
    or a device named ``x.jpg`` would wait or read for ever."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: not a regular file ({_file_kind(mode)})")
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character "
             "device", stat.S_ISBLK: "a block device"}  # fmt: skip
    return next((kind for test, kind in kinds.items() if test(mode)), "not a file")


def open_source(path: Path, max_pixels: int, chunk_size: int = 16) -> ImageSource | VideoSource:
    """The right source for ``path``, or an :class:`InputError` that says why not."""
    check_input_file(path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return ImageSource(path, max_pixels)
    if suffix in VIDEO_SUFFIXES:
        return VideoSource(path, max_pixels, chunk_size)
    raise InputError(
        f"{path.name}: unsupported file type {suffix or '(none)'}; deepguard protects "
        f"JPEG, PNG and WebP images and MP4 and MOV videos"
    )
