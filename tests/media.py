"""Build small test clips from the shared talking-head videos (PyAV), inside the tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def read_frames(path: Path, count: int | None = None) -> list[np.ndarray]:
    """The first ``count`` frames of ``path`` as RGB arrays (stored orientation)."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            frames.append(frame.to_ndarray(format="rgb24"))
            if count and len(frames) == count:
                break
    return frames


def make_clip(
    source: Path,
    target: Path,
    count: int,
    size: tuple[int, int] | None = None,
    pts: list[int] | None = None,
    time_base: Fraction = Fraction(1, 12800),
    rate: int = 25,
    rotation: int = 0,
    pix_fmt: str = "yuv420p",
    audio: bool = True,
    frames: list[np.ndarray] | None = None,
) -> Path:
    """A short H.264 clip from ``source``'s first frames, with its audio up to the same time.

    ``pts`` gives every frame's timestamp (variable frame rate); ``rotation`` is written as
    display rotation; ``size`` is (width, height) and may be odd.
    """
    frames = frames if frames is not None else read_frames(source, count)
    if size:
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    pts = pts or [round(i / (rate * time_base)) for i in range(len(frames))]
    end_seconds = float((pts[-1] + 1 / (rate * time_base)) * time_base)
    fmt = "mov" if target.suffix == ".mov" else "mp4"
    with av.open(str(source)) as original, av.open(str(target), "w", format=fmt) as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height = frames[0].shape[1], frames[0].shape[0]
        video.pix_fmt = pix_fmt
        video.time_base = time_base
        video.codec_context.time_base = time_base
        video.options = {"crf": "18", "preset": "ultrafast"}
        if rotation:
            video.set_display_rotation(rotation)
        sources = list(original.streams.audio) if audio else []
        copies = {s.index: out.add_stream_from_template(s) for s in sources}
        for rgb, stamp in zip(frames, pts, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = stamp, time_base
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sources:
            for packet in original.demux(sources):
                if not packet.size or packet.pts is None:
                    continue
                if packet.pts * packet.time_base > end_seconds:
                    continue
                packet.stream = copies[packet.stream.index]
                out.mux(packet)
    return target


def faststart_copy(source: Path, target: Path) -> Path:
    """``source`` remuxed with its index (``moov``) at the front, as web-ready encoders write
    it: cut short, such a file still lists every frame but holds only the first ones."""
    with (
        av.open(str(source)) as original,
        av.open(str(target), "w", options={"movflags": "faststart"}) as out,
    ):
        copies = {s.index: out.add_stream_from_template(s) for s in original.streams}
        for packet in original.demux():
            if packet.dts is None:  # the demuxer's flush packets
                continue
            packet.stream = copies[packet.stream.index]
            out.mux(packet)
    return target


def damaged_copy(source: Path, target: Path, garbage: int = 2000, seed: int = 0) -> Path:
    """``source`` with ``garbage`` random bytes written over the middle of the file."""
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + garbage] = np.random.default_rng(seed).bytes(garbage)
    target.write_bytes(bytes(data))
    return target
