"""Protect a clip on Ray: decode → scenecut → track → poison (a pool) → smooth → remux → verify,
then, for frames the written file still shows a face on: decode → repair (a pool) → remux →
verify.

The driver only moves object references and small progress records. It keeps a bounded
number of chunks in flight, so memory stays flat however long the video is. The output is
written to a hidden partial file, verified by decoding it back, and renamed into place only
when everything succeeded: a failed job leaves no file behind. Every written frame's
perturbation is kept in a hidden spill file beside it, so failing frames can be repaired and
the clip encoded again with every other frame exactly as before.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError

from deepguard import __version__
from deepguard.attack.budget import Rung
from deepguard.attack.config import AttackConfig
from deepguard.attack.core import FacePoison
from deepguard.attack.face_report import epsilon_summary
from deepguard.attack.precision import resolve_precision
from deepguard.attack.profiles import judged_profiles
from deepguard.attack.tool_report import ToolCounts, tallies_of_counts, tool_summary
from deepguard.errors import DeepguardError
from deepguard.faults import fault_point
from deepguard.fileio import temporary_beside, write_atomically
from deepguard.models.registry import load_detector
from deepguard.pipeline.actors import DecodeActor, RemuxActor, StageActor
from deepguard.pipeline.cluster import (
    SINGLE_STAGE_GPU_SHARE,
    actors_per_gpu,
    attack_gpu_share,
    cluster_device,
    cluster_devices,
    connect,
    get_result,
    settle,
)
from deepguard.progress import VIDEO_STAGES, detector_phase
from deepguard.settings import Settings, get_settings
from deepguard.stages.decode import VideoSource
from deepguard.stages.poison import PoisonStage
from deepguard.stages.remux import video_output_format
from deepguard.stages.repair import RepairStage
from deepguard.stages.scenecut import SceneCutStage
from deepguard.stages.smooth import SmoothStage
from deepguard.stages.spill import SpilledDeltas
from deepguard.stages.track import TrackStage
from deepguard.stages.verify import VerifyStage
from deepguard.stages.video_io import EncoderSettings, H264Roundtrip, VideoInfo, output_pix_fmt

log = logging.getLogger(__name__)

#: progress callback: (stage, frames done, frames expected or 0 when unknown)
StageProgress = Callable[[str, int, int], None]
#: the repair pass's progress comes as one more stage, when it runs
STAGES = (*VIDEO_STAGES, "repair")


# -- stage builders: module-level so Ray can pickle them into the actors --------------------


def _build_scenecut(fps: float) -> SceneCutStage:
    return SceneCutStage(fps)


def _build_track(detector: str, device: str) -> TrackStage:
    return TrackStage(load_detector(detector, device))


def _build_poison(
    config: AttackConfig, device: str, roundtrip: H264Roundtrip, gpu_share: float = 1.0
) -> PoisonStage:
    return PoisonStage(config, device=device, roundtrip=roundtrip, gpu_share=gpu_share)


def _build_smooth(config: AttackConfig, device: str, roundtrip: H264Roundtrip) -> SmoothStage:
    return SmoothStage(FacePoison(config, device=device), roundtrip)


def _build_verify(config: AttackConfig, device: str) -> VerifyStage:
    return VerifyStage(FacePoison(config, device=device))


def _build_repair(
    config: AttackConfig,
    device: str,
    deltas: SpilledDeltas,
    failing: dict[int, list[str]],
    roundtrip: H264Roundtrip,
    gpu_share: float = 1.0,
) -> RepairStage:
    poison = PoisonStage(config, device=device, gpu_share=gpu_share)
    return RepairStage(poison, deltas, failing, roundtrip)


class VideoProtector:
    """Runs one clip through the Ray pipeline and writes the report."""

    def __init__(
        self,
        config: AttackConfig,
        settings: Settings | None = None,
        stages: dict[str, Callable[[], Any]] | None = None,
    ) -> None:
        """``stages`` replaces the builder of a stage by name (``"poison"``, ``"smooth"``, …):
        a picklable callable returning an object with ``process(chunk) -> chunk``."""
        self.settings = settings or get_settings()
        self.config = config.for_video().with_default_precision(self.settings.precision)
        self.encoder = EncoderSettings(config.video.crf, config.video.x264_preset)
        self.stages = stages or {}

    def protect(
        self,
        source_path: Path,
        output_path: Path,
        report_path: Path | None = None,
        progress: StageProgress | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        source = VideoSource(source_path, self.settings.max_image_pixels)
        source.validate()  # a corrupt or cut file is refused here, before any Ray work
        info = source.info
        container = video_output_format(output_path, info)
        connect(self.settings)
        run = _Run(self, info, output_path, container, progress or (lambda *_: None))
        try:
            run.start_actors()
            rows = run.protect()
            run.verify(rows)
            run.repair(rows)
            os.replace(run.partial, output_path)
            fault_point("after_rename")
        except BaseException:
            run.abort()
            raise
        finally:
            run.stop_actors()
            run.remove_temporaries()
        report = run.report(rows, source_path, output_path, time.perf_counter() - started)
        if report_path:
            write_atomically(report_path, json.dumps(report, indent=2).encode())
        return report


class _Run:
    """The actors and bookkeeping of one job."""

    def __init__(self, owner: VideoProtector, info: VideoInfo, output: Path, container: str,
                 progress: StageProgress) -> None:  # fmt: skip
        self.owner = owner
        self.config = owner.config
        self.settings = owner.settings
        self.info = info
        self.output = output
        # hidden files beside the output: partial encodes and perturbation spills
        self.temporaries: list[Path] = []
        self.partial = self._temporary()
        self.container = container
        self.progress = progress
        self.done = dict.fromkeys(STAGES, 0)
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.faces: dict[str, list[int]] = {}  # detector → faces found before, after
        self.pts: list[int] = []
        self.actors: list[ray.actor.ActorHandle] = []
        self.remux: ray.actor.ActorHandle | None = None
        # the actors of the pass that wrote the file: done with once it is verified
        self.pass_actors: list[ray.actor.ActorHandle] = []
        # every written frame's perturbation (None: final repairs are off)
        self.deltas: SpilledDeltas | None = None
        self.repaired: list[int] = []  # frames the repair passes attacked again
        self.repair_rounds = 0
        self.found_before_repair: dict[str, int] | None = None
        # the loops' results in flight (refs, or pairs of refs from one call): what a failed
        # run leaves in them is settled once the actors are gone
        self.unsettled: list[Collection] = []
        cpus, gpus = cluster_devices()
        self.device = cluster_device(self.settings, gpus)
        if self.device == "cuda":  # several attack actors share each card
            self.pool_size = gpus * actors_per_gpu(self.settings)
        else:
            self.pool_size = max(1, cpus - 1)
        self.cpus = cpus
        self.gpus = gpus if self.device == "cuda" else 0
        pix_fmt = output_pix_fmt(info.pix_fmt, info.width, info.height)
        video = owner.config.video
        harsher = EncoderSettings(min(51, video.crf + video.verify_crf_margin), video.x264_preset)
        self.roundtrip = H264Roundtrip(pix_fmt, harsher)
        repairs = EncoderSettings(min(51, video.crf + video.repair_crf_margin), video.x264_preset)
        self.repair_roundtrip = H264Roundtrip(pix_fmt, repairs)

    def _temporary(self) -> Path:
        handle, path = temporary_beside(self.output)
        os.close(handle)
        self.temporaries.append(path)
        return path

    def remove_temporaries(self) -> None:
        """Spills, and partial files of a failed job (the finished one has been renamed)."""
        for path in self.temporaries:
            path.unlink(missing_ok=True)
        self.temporaries = []

    def _spill(self) -> str | None:
        return str(self._temporary()) if self.config.video.final_repairs else None

    # -- actors ----------------------------------------------------------------------------

    def _stage(self, name: str, build: Callable[[], Any], ordered: bool, heavy: bool = False,
               detectors: bool = False):  # fmt: skip
        """A stage actor; heavy ones (the attack) get a CPU or a share of a GPU each
        (``DEEPGUARD_GPU_SHARE``), the other stages that run ``detectors`` a small share."""
        build = self.owner.stages.get(name, build)
        options: dict[str, Any] = {"num_cpus": 1 if heavy and not self.gpus else 0}
        if self.gpus and heavy:
            options["num_gpus"] = attack_gpu_share(self.settings)
        elif self.gpus and detectors:  # placed on a GPU node and allowed to see the card
            options["num_gpus"] = SINGLE_STAGE_GPU_SHARE
        threads = max(1, self.cpus // self.pool_size) if heavy else 1
        actor = StageActor.options(**options).remote(name, build, threads, ordered)
        self.actors.append(actor)
        return actor

    def start_actors(self) -> None:
        config, device, info = self.config, self.device, self.info
        max_pixels = self.settings.max_image_pixels
        self.decoder = DecodeActor.options(num_cpus=0).remote(
            str(info.path), max_pixels, config.video.chunk_size
        )
        self.actors.append(self.decoder)
        self.scenecut = self._stage("scenecut", functools.partial(_build_scenecut, info.fps), True)
        track = functools.partial(_build_track, config.video.track_detector, device)
        self.tracker = self._stage("track", track, True, detectors=True)
        share = attack_gpu_share(self.settings) if self.gpus else 1.0
        poison = functools.partial(_build_poison, config, device, self.roundtrip, share)
        self.pool = [self._stage("poison", poison, False, heavy=True)
                     for _ in range(self.pool_size)]  # fmt: skip
        smooth = functools.partial(_build_smooth, config, device, self.roundtrip)
        self.smoother = self._stage("smooth", smooth, True, detectors=True)
        self.remux = RemuxActor.options(num_cpus=0).remote(
            info, str(self.partial), self.container, self.owner.encoder, self._spill()
        )
        self.actors.append(self.remux)
        self.pass_actors = [self.decoder, *self.pool, self.scenecut, self.tracker, self.smoother]

    def stop_actors(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        settle(_flatten(self.unsettled))
        self.unsettled = []

    def abort(self) -> None:
        if self.remux is not None:
            # the actor may be what failed; the partial files are removed anyway
            with contextlib.suppress(RayError):
                ray.get(self.remux.abort.remote(), timeout=30)
        self.remove_temporaries()

    # -- the streaming loop ----------------------------------------------------------------

    def protect(self) -> list[dict[str, Any]]:
        """Stream every chunk through the stages; returns one report row per frame."""

        def stages(index: int) -> tuple[ray.actor.ActorHandle, ...]:
            worker = self.pool[index % self.pool_size]
            return (self.scenecut, self.tracker, worker, self.smoother)

        return [row for stats in self._stream(self.decoder, stages) for row in stats]

    def _stream(
        self,
        decoder: ray.actor.ActorHandle,
        stages: Callable[[int], Sequence[ray.actor.ActorHandle]],
    ) -> Iterator[list[dict[str, Any]]]:
        """Every chunk ``decoder`` gives through ``stages(n)`` (the n-th chunk's actors) into
        ``self.remux``, with at most pool size + 2 chunks in flight; yields each chunk's
        report rows in order, then closes the file and keeps its spilled perturbations."""
        window = self.pool_size + 2  # chunks in flight: enough to keep the pool busy
        in_flight: deque[tuple[ray.ObjectRef, ray.ObjectRef]] = deque()
        watched: list[ray.ObjectRef] = []
        self.unsettled += [in_flight, watched]
        submitted = 0
        finished = False
        while not finished or in_flight:
            while not finished and len(in_flight) < window:
                decoded, chunk = decoder.next.options(num_returns=2).remote()
                record = self._get(decoded, chunk)
                if not record["frames"]:
                    finished = True
                    break
                self._advance(record)
                for stage in stages(submitted):
                    record, chunk = stage.process.options(num_returns=2).remote(chunk)
                    watched.append(record)
                written, stats = self.remux.process.options(num_returns=2).remote(chunk)
                in_flight.append((written, stats))
                submitted += 1
            self._poll(watched)
            if in_flight and (finished or len(in_flight) >= window):
                written, stats = in_flight.popleft()
                self._advance(self._get(written, stats))
                yield self._get(stats)
        self._poll(watched, wait=True)
        frames, self.deltas = self._get(self.remux.close.remote())
        if frames != len(self.pts):
            raise DeepguardError(f"wrote {frames} frames but decoded {len(self.pts)}")

    def _advance(self, record: dict[str, Any]) -> None:
        stage = record["stage"]
        self.done[stage] += record["frames"]
        self.seconds[stage] += record["seconds"]
        if stage == "decode" and not self.repair_rounds:  # a repair pass decodes them again
            self.pts += record.get("pts", [])
        self.progress(stage, self.done[stage], self.info.frames)
        for name, (before, after) in record.get("faces", {}).items():
            totals = self.faces.setdefault(name, [0, 0])
            totals[0] += before
            totals[1] += after
            self.progress(detector_phase("faces", name), totals[1], totals[0])

    def _poll(self, refs: list[ray.ObjectRef], wait: bool = False) -> None:
        """Account for finished stage calls; ``refs`` keeps the ones still running."""
        if not refs:
            return
        ready, refs[:] = ray.wait(refs, num_returns=len(refs), timeout=None if wait else 0)
        for ref in ready:
            self._advance(self._get(ref))

    def _get(self, ref: ray.ObjectRef, *siblings: ray.ObjectRef) -> Any:
        return get_result(ref, *siblings)

    # -- verification on the written file --------------------------------------------------

    def verify(self, rows: list[dict[str, Any]]) -> None:
        """Decode the written file: same frames and timestamps, and the faces still found."""
        source = VideoSource(
            self.partial,
            self.settings.max_image_pixels,
            self.config.video.chunk_size,
            container=self.container,
        )
        self.done["verify"] = 0  # a repair pass checks the whole file again
        verify = functools.partial(_build_verify, self.config, self.device)
        for actor in self.pass_actors:
            ray.kill(actor)  # done with; free their CPUs and memory for the verify pool
        pool = [self._stage("verify", verify, False, heavy=True) for _ in range(self.pool_size)]
        self.pass_actors = pool  # and the verify pool's for a repair pass
        pending: deque[tuple[ray.ObjectRef, ray.ObjectRef]] = deque()
        self.unsettled.append(pending)
        written_pts: list[int] = []
        for index, chunk in enumerate(source.chunks()):
            written_pts += chunk.pts.tolist()
            # the faces the poison stage protected on these frames, for the per-face verdict
            chunk.stats = [
                {"faces": rows[i].get("faces", [])} for i in range(chunk.start, chunk.stop)
            ]
            pending.append(pool[index % len(pool)].process.options(num_returns=2).remote(chunk))
            if len(pending) > 2 * len(pool):  # bounded, like the main loop
                self._collect(pending.popleft(), rows)
        while pending:
            self._collect(pending.popleft(), rows)
        if written_pts != self.pts:
            raise DeepguardError("the written video's frame timestamps differ from the input's")

    # -- repairing what the written file still shows ---------------------------------------

    def repair(self, rows: list[dict[str, Any]]) -> None:
        """Attack again the frames the written file still shows a face on, encode the clip
        again and check it again: up to ``video.final_repairs`` rounds. A frame still found
        after them is in the report as found."""
        for _ in range(self.config.video.final_repairs):
            failing = _failing(rows, self.config.detectors)
            if not failing:
                return
            if not self.repaired:  # what the first written file showed, for the report
                self.found_before_repair = {
                    name: sum(row["faces_after"][name] for row in rows)
                    for name in self.config.detectors
                }
            self.repair_rounds += 1
            log.info("%d frames still show a face in the written file; repairing them",
                     len(failing))  # fmt: skip
            self.repaired = sorted({*self.repaired, *failing})
            self._encode_again(failing, rows)
            self.verify(rows)

    def _encode_again(self, failing: dict[int, list[str]], rows: list[dict[str, Any]]) -> None:
        """decode → repair (a pool) → remux into a new partial file and spill, in order."""
        for actor in self.pass_actors:
            ray.kill(actor)
        video = self.config.video
        old_partial, old_deltas, old_remux = self.partial, self.deltas, self.remux
        self.done.update(decode=0, repair=0, remux=0)  # the pass goes through them again
        share = attack_gpu_share(self.settings) if self.gpus else 1.0
        build = functools.partial(_build_repair, self.config, self.device, self.deltas, failing,
                                  self.repair_roundtrip, share)  # fmt: skip
        decoder = DecodeActor.options(num_cpus=0).remote(
            str(self.info.path), self.settings.max_image_pixels, video.chunk_size
        )
        self.actors.append(decoder)
        pool = [self._stage("repair", build, False, heavy=True) for _ in range(self.pool_size)]
        self.partial = self._temporary()
        self.remux = RemuxActor.options(num_cpus=0).remote(
            self.info, str(self.partial), self.container, self.owner.encoder, self._spill()
        )
        self.actors.append(self.remux)
        self.pass_actors = [decoder, *pool]
        frame = 0
        for stats in self._stream(decoder, lambda index: (pool[index % self.pool_size],)):
            for row in stats:
                rows[frame].update(_with_earlier_repairs(row, rows[frame]))
                frame += 1
        ray.kill(old_remux)
        old_partial.unlink(missing_ok=True)
        if old_deltas is not None:
            old_deltas.remove()

    def _collect(self, refs: tuple[ray.ObjectRef, ray.ObjectRef], rows: list[dict]) -> None:
        record, chunk = self._get(*refs), self._get(refs[1])
        self._advance(record)
        for offset, stats in enumerate(chunk.stats):
            row = rows[chunk.start + offset]
            # every check of the written file costs passes: a repair's check adds its own
            stats["verify_passes"] = stats.get("verify_passes", 0) + row.get("verify_passes", 0)
            row.update(stats)

    # -- the report ------------------------------------------------------------------------

    def report(self, rows: list[dict[str, Any]], source: Path, output: Path,
               seconds: float) -> dict[str, Any]:  # fmt: skip
        info = self.info
        for index, row in enumerate(rows):
            row["frame"], row["pts"] = index, self.pts[index]
        detectors = {}
        for name in self.config.detectors:
            before = sum(r["faces_before"][name] for r in rows)
            after = sum(r["faces_after"][name] for r in rows)
            detectors[name] = {
                "faces_before": before,
                "faces_after": after,
                "hide_rate": round(1 - after / before, 4) if before else None,
            }
        flicker = [r["flicker"] for r in rows if "flicker" in r]
        psnr = [r["psnr_db"] for r in rows if r.get("psnr_db") is not None]
        duration = info.duration_s or len(rows) / (info.fps or 25)
        return {
            "deepguard": __version__,
            "input": str(source),
            "output": str(output),
            "kind": "video",
            "video": {
                "width": info.width,
                "height": info.height,
                "rotation": info.rotation,
                "fps": info.fps,
                "frames": len(rows),
                "duration_s": duration,
                "audio_streams": info.audio_streams,
                "container": self.container,
            },
            "parameters": self.config.model_dump(mode="json"),
            "summary": {
                "scene_cuts": [r["frame"] for r in rows if r.get("scene_start")][1:],
                "faces_tracked": max((r["faces_tracked"] for r in rows), default=0),
                "detectors": detectors,
                "tools": self._tool_rows(rows),
                "iterations_per_frame": _mean(r["iterations"] for r in rows),
                "detector_passes_per_frame": _mean(_frame_passes(r).total() for r in rows),
                # every pass by kind, per frame on average: those of the attack and its checks,
                # "report" (the tools' other detectors), "repair" (frames attacked again after
                # the check of the written file) and "verify" (that check)
                "detector_passes_by_kind": {
                    kind: round(n / max(len(rows), 1), 2)
                    for kind, n in sum((_frame_passes(r) for r in rows), Counter()).items()
                },
                # frames the check of the written file found a face on, attacked again
                "final_repair": {
                    "rounds": self.repair_rounds,
                    "frames": self.repaired,
                    # faces per detector on the first written file (the figures above are
                    # on the last)
                    "faces_after_before_repair": self.found_before_repair,
                },
                "key_frames": sum(r["key_frame"] for r in rows),
                # the ε the faces got, over every face on every frame
                "epsilon": epsilon_summary(_rungs(rows), self.config.epsilon),
                "psnr_db": _mean(psnr),
                "flicker": _mean(flicker, 4),
                "seconds": round(seconds, 2),
                "realtime_factor": round(seconds / duration, 2) if duration else None,
                "stage_seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "workers": {
                    "poison": self.pool_size,
                    "device": self.device,
                    "precision": resolve_precision(self.config.precision, self.device),
                    "gpu_share": attack_gpu_share(self.settings) if self.gpus else None,
                },
                # out-of-memory fallbacks the poison actors took (each also logged)
                "memory_fallbacks": [f for r in rows for f in r.get("memory_fallbacks", [])],
            },
            "frames": rows,
        }

    def _tool_rows(self, rows: list[dict[str, Any]]) -> list[dict]:
        """Per tool profile, faces on the clean frames (counted by the poison stage) → on the
        frames decoded from the written file (by the verify stage), and the verdict."""
        before, after = _per_tool(rows, "tools_before"), _per_tool(rows, "tools_after")
        config = self.config
        profiles = judged_profiles(config.tools, config.extra_tools, config.detectors)
        tallies = tallies_of_counts(before, after, "saved")
        return tool_summary(profiles, self.config.detectors, tallies)


def _frame_passes(row: dict[str, Any]) -> Counter:
    """A frame's detector passes by kind, the final repairs and the checks of the written file
    included."""
    passes = Counter(row.get("passes_by_kind") or {"attack": row["passes"]})
    passes["repair"] += row.get("final_repair", {}).get("passes", 0)
    passes["verify"] += row.get("verify_passes", 0)
    return +passes


def _with_earlier_repairs(row: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    """A repair pass's row for a frame, its passes and rounds added to an earlier pass's."""
    if "final_repair" not in row or "final_repair" not in earlier:
        return row
    before, now = earlier["final_repair"], row["final_repair"]
    total = {key: before[key] + now[key] for key in ("passes", "iterations", "rounds")}
    return {**row, "final_repair": {**now, **total}}


def _failing(rows: list[dict[str, Any]], detectors: list[str]) -> dict[int, list[str]]:
    """Frames the written file still shows a face on, each with the detectors its scene still
    attacks (all of them are attacked again: a repair must not bring back another)."""
    failing = {}
    for index, row in enumerate(rows):
        attacked = [name for name in detectors if name not in row.get("given_up", ())]
        if any(row["faces_after"].get(name, 0) for name in attacked):
            failing[index] = attacked
    return failing


def _flatten(collections: list[Collection]) -> list[ray.ObjectRef]:
    """The refs in collections of refs and of pairs of refs."""
    return [ref for refs in collections for item in refs
            for ref in (item if isinstance(item, tuple) else (item,))]  # fmt: skip


def _per_tool(rows: list[dict[str, Any]], key: str) -> ToolCounts:
    """Per tool, its counts over the frames whose rows have them (a tool none of whose
    detectors could be loaded has none)."""
    counts: ToolCounts = {}
    for row in rows:
        for tool, found in row.get(key, {}).items():
            counts.setdefault(tool, []).append(found)
    return counts


def _rungs(rows: list[dict[str, Any]]) -> Iterator[Rung]:
    """The rung every face of every frame ended on."""
    for row in rows:
        lifted = set(row.get("floor_lifted", []))
        for index, level in enumerate(row.get("epsilon", [])):
            yield Rung(level, index in lifted)


def _mean(values, digits: int = 2) -> float | None:
    values = list(values)
    return round(float(np.mean(values)), digits) if values else None
