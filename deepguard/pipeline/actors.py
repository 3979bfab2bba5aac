"""Ray actors around the plain stage classes.

Every actor is built once per job and kept warm (loading detectors is slow). Stateful stages
(scene cuts, tracking, smoothing, muxing) are single actors and see chunks strictly in order;
the poison stage is a pool. Each call returns a small progress record and the chunk as two
separate objects, so the driver can follow progress without pulling frames through itself.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from deepguard.attack.config import AttackConfig
from deepguard.pipeline.photo import PhotoProtector, ProtectOptions
from deepguard.settings import Settings
from deepguard.stages.chunk import Chunk
from deepguard.stages.decode import VideoSource
from deepguard.stages.remux import VideoSink
from deepguard.stages.spill import DeltaSpill, SpilledDeltas
from deepguard.stages.video_io import EncoderSettings, VideoInfo

#: what the driver learns from each call: stage name, chunk start, frames, seconds
Progress = dict[str, Any]


def _faces_summary(stats: list[dict]) -> dict:
    """``{"faces": {detector: [before, after]}}`` over the rows that carry face counts."""
    rows = [row for row in stats if row.get("faces_after_roundtrip") is not None]
    if not rows:
        return {}
    faces = {
        name: [sum(row["faces_before"][name] for row in rows),
               sum(row["faces_after_roundtrip"][name] for row in rows)]
        for name in rows[0]["faces_before"]
    }  # fmt: skip
    return {"faces": faces}


def _progress(stage: str, chunk: Chunk | None, started: float, frames: int | None = None):
    return {
        "stage": stage,
        "start": chunk.start if chunk else None,
        "frames": frames if frames is not None else len(chunk) if chunk else 0,
        "seconds": time.perf_counter() - started,
    }


@ray.remote
class StageActor:
    """Runs one stage object (anything with ``process(chunk) -> chunk``) on chunks.

    ``ordered`` stages check that chunks arrive in sequence: a stateful stage fed out of
    order would produce a subtly wrong video, so it fails loudly instead.
    """

    def __init__(self, name: str, build: Callable[[], Any], threads: int, ordered: bool):
        torch.set_num_threads(max(1, threads))
        self.name = name
        self.stage = build()
        self.ordered = ordered
        self.expected = 0

    def process(self, chunk: Chunk) -> tuple[Progress, Chunk]:
        started = time.perf_counter()
        if self.ordered and chunk.start != self.expected:
            raise RuntimeError(f"{self.name}: got frame {chunk.start}, expected {self.expected}")
        self.expected = chunk.stop
        frames = len(chunk)
        chunk = self.stage.process(chunk)
        record = _progress(self.name, chunk, started, frames)
        if self.name == "poison":  # faces each detector found before and after, this chunk
            record.update(_faces_summary(chunk.stats))
        return record, chunk


@ray.remote
class DecodeActor:
    """Decodes the input on request, one chunk per call (the driver sets the pace)."""

    def __init__(self, path: str, max_pixels: int, chunk_size: int) -> None:
        self.source = VideoSource(Path(path), max_pixels, chunk_size)
        self.chunks = self.source.chunks()

    def next(self) -> tuple[Progress, Chunk | None]:
        started = time.perf_counter()
        chunk = next(self.chunks, None)
        record = _progress("decode", chunk, started)
        record["pts"] = chunk.pts.tolist() if chunk else []
        return record, chunk


@ray.remote
class RemuxActor:
    """Owns the output file while it is written; frames never come back to the driver."""

    def __init__(self, info: VideoInfo, partial: str, container: str,
                 settings: EncoderSettings, spill: str | None = None) -> None:  # fmt: skip
        """``spill``: where to keep every written frame's perturbation, for repairs (none
        when ``None``)."""
        self.sink = VideoSink(info, Path(partial), container, settings)
        self.spill = DeltaSpill(Path(spill)) if spill else None
        self.expected = 0

    def process(self, chunk: Chunk) -> tuple[Progress, list[dict[str, Any]]]:
        started = time.perf_counter()
        if chunk.start != self.expected:
            raise RuntimeError(f"remux: got frame {chunk.start}, expected {self.expected}")
        self.expected = chunk.stop
        self.sink.write(chunk)
        if self.spill is not None:
            protected = chunk.protected if chunk.protected is not None else chunk.frames
            for offset, (clean, written) in enumerate(zip(chunk.frames, protected, strict=True)):
                self.spill.put(chunk.start + offset, clean, written)
        return _progress("remux", chunk, started), chunk.stats

    def close(self) -> tuple[int, SpilledDeltas | None]:
        """Frames written, and the perturbations they were written with."""
        self.sink.close()
        deltas = self.spill.finish() if self.spill is not None else None
        return self.sink.frames_written, deltas

    def abort(self) -> None:
        self.sink.abort()
        if self.spill is not None:
            self.spill.abort()


@ray.remote
class ImageActor:
    """Protects images where Ray places it (a GPU worker, say) and streams progress back.

    The image path itself is the in-process one (:class:`~deepguard.pipeline.photo
    .PhotoProtector`); :meth:`protect` is a streaming generator: ``("progress", (phase, done,
    total))`` records while the attack runs, then ``("report", report)``.
    """

    def __init__(self, config: AttackConfig, settings: Settings, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.protector = PhotoProtector(config.with_default_precision(settings.precision),
                                        settings)  # fmt: skip

    def protect(self, source: str, output: str, report: str | None):
        events: queue.Queue = queue.Queue()

        def run() -> None:
            try:
                options = ProtectOptions(report_path=Path(report) if report else None)
                result = self.protector.protect(
                    Path(source), Path(output), options,
                    lambda *record: events.put(("progress", record)),
                )  # fmt: skip
                events.put(("report", result))
            except BaseException as error:  # raised again below, in the generator
                events.put(("error", error))

        threading.Thread(target=run, name="deepguard-image", daemon=True).start()
        while True:
            kind, value = events.get()
            if kind == "error":
                raise value
            yield kind, value
            if kind == "report":
                return
