"""The poison stage: run the FacePoison attack core on the frames of a chunk.

An image is one key frame. In a clip, the first frame of every scene gets the full attack, and
so does the first frame of a chunk when this worker did not process the chunk before it (in a
pool, chunks are spread over workers). Every other frame starts from the previous frame's
perturbation, carried along with each tracked face, and only gets refinement iterations if
that start no longer hides it.

Both paths attack through :meth:`PoisonStage._attack`, which sizes batches to the free GPU
memory and falls back on out-of-memory errors (:mod:`deepguard.attack.memory`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from deepguard.attack.budget import Rung, RungHints
from deepguard.attack.config import AttackConfig
from deepguard.attack.core import AttackResult, FacePoison, Progress, Roundtrip
from deepguard.attack.delivery import OutputCodec
from deepguard.attack.memory import MemoryGuard
from deepguard.attack.regions import Window
from deepguard.attack.tool_report import ToolCounts, most_per_tool
from deepguard.attack.verification import MATCH_IOU, box_iou
from deepguard.stages.carry import carry_delta, track_windows
from deepguard.stages.chunk import Chunk, FrameTracks

log = logging.getLogger(__name__)


class PoisonStage:
    """Holds the loaded ensemble so every chunk reuses it (loading weights is slow)."""

    def __init__(
        self,
        config: AttackConfig,
        device: str = "cpu",
        roundtrip: Roundtrip | None = None,
        batch_size: int | None = None,
        gpu_share: float = 1.0,
    ) -> None:
        """``gpu_share``: the part of the card this stage plans its batches with (its Ray
        share, when attack actors share a GPU)."""
        self.config = config
        self.attack = FacePoison(config, device=device)
        # warm frames share the loaded detectors but get a shorter repair budget
        self.warm_attack = FacePoison(config.for_warm_frames(), self.attack.detectors, device)
        self.segment_attack = FacePoison(config.for_segments(), self.attack.detectors, device)
        self.roundtrip = roundtrip
        cuda = torch.device(device).type == "cuda"
        # on a CPU, frames in a batch cost what they cost alone; only a segment's sampled
        # frames, which share one perturbation, need to go together there
        self.batch_size = batch_size or config.video.batch_size or (8 if cuda else 4)
        # on CUDA the batch also shrinks to what free memory holds; halved on out of memory
        self.memory = MemoryGuard(device, self.batch_size, gpu_share)
        # where the last chunk ended: a worker that gets the next chunk too carries on from it
        self._carry_over: _CarryOver | None = None

    def protect_frames(
        self,
        frames: np.ndarray,
        roundtrip: Roundtrip | None = None,
        progress: Progress | None = None,
        init_delta: torch.Tensor | None = None,
        windows: list[Window] | None = None,
        codec: OutputCodec | None = None,
    ) -> AttackResult:
        """Protect N×H×W×3 uint8 RGB frames; see :meth:`FacePoison.protect`."""
        return self._attack(
            self.attack, frames, init_delta=init_delta, windows=windows, roundtrip=roundtrip,
            progress=progress, codec=codec,
        )  # fmt: skip

    def repair_frame(
        self,
        frame: np.ndarray,
        start: torch.Tensor,
        roundtrip: Roundtrip | None,
        targets: list[str],
    ) -> AttackResult:
        """A frame the check of the written file still found a face on (1×H×W×3): the key
        frame's full attack on ``targets``, from the perturbation it was written with, which
        failed (:class:`~deepguard.stages.repair.RepairStage`)."""
        return self._attack(
            self.attack, frame, init_delta=start, roundtrip=roundtrip, targets=targets,
            start_failed=True,
        )  # fmt: skip

    def _attack(
        self,
        attack: FacePoison,
        frames: np.ndarray,
        init_delta: torch.Tensor | None = None,
        windows: list[Window] | None = None,
        iterations: int | None = None,
        roundtrip: Roundtrip | None = None,
        progress: Progress | None = None,
        targets: list[str] | None = None,
        start_failed: bool = False,
        shared: bool = False,
        codec: OutputCodec | None = None,
        hints: RungHints | None = None,
    ) -> AttackResult:
        """``attack.protect`` on ``frames`` in batches that fit in memory, with fewer frames
        per batch and then fewer iterations after an out-of-memory error: the one place the
        image and the video path both go through. The fallbacks taken are in the result."""
        budget = iterations or attack.config.iterations

        def attempt(start: int, stop: int, cap: int | None) -> AttackResult:
            return (attack if cap is None else _capped(attack, cap)).protect(
                frames[start:stop],
                init_delta=None if init_delta is None else init_delta[start:stop],
                windows=_windows_between(windows, start, stop),
                iterations=budget if cap is None else min(budget, cap),
                roundtrip=roundtrip,
                progress=progress,
                targets=targets,
                start_failed=start_failed,
                shared=shared,
                codec=codec,
                hints=None if hints is None else hints[start:stop],
            )

        results, fallbacks = self.memory.run(len(frames), frames.shape[1:3], budget, attempt)
        return _merge(results, fallbacks)

    def process(self, chunk: Chunk) -> Chunk:
        """Protect a chunk of a clip (tracks and scene starts filled in); sets ``protected``
        and one stats row per frame."""
        roundtrip = self.roundtrip
        warm = self.config.video.warm_start
        chunk.protected = np.empty_like(chunk.frames)
        chunk.stats = []
        reference: tuple[torch.Tensor, FrameTracks] | None = None
        given_up: set[str] = set()  # detectors a full attack could not beat in this scene
        # the rung of the ε ladder each track reached in this scene: it holds until the cut
        reached: dict[int, Rung] = {}
        carried = self._carry_over
        if carried and carried.stop == chunk.start:
            reference = (carried.delta, carried.tracks)
            given_up, reached = carried.given_up, dict(carried.reached)
        start = 0
        while start < len(chunk):
            key = reference is None or start in chunk.scene_starts or not warm
            if start in chunk.scene_starts:
                reached = {}
            stop = self._batch_stop(chunk, start, 1 if key else self.config.video.segment_frames)
            frames = chunk.frames[start:stop]
            tracks = chunk.tracks[start:stop] if chunk.tracks else [{}] * (stop - start)
            hints = _hints(tracks, reached)
            if key:
                windows = self._windows(tracks, frames.shape[1:3])
                result = self._attack(
                    self.attack, frames, windows=windows, roundtrip=roundtrip, hints=hints
                )
                given_up = _detectors_to_give_up(result, self.config.video.give_up_below)
            else:
                result = self._warm(frames, tracks, reference, given_up, hints)
            _reach(reached, result, tracks)
            chunk.protected[start:stop] = result.frames
            # the tools' detectors outside the ensemble count the clean frames here, where
            # they are in memory; cheap next to the attack (720p on 2 CPU cores, RetinaFace
            # and YuNet attacked: 0.9 s for MTCNN's and YOLO5Face's looks, 84 s for a warm
            # frame's attack, 187 s for a key frame's)
            uncovered = self.attack.judge_uncovered(frames, result.faces)
            result = _with_passes(result, Counter(report=uncovered.passes))
            tools_before = most_per_tool(result.tools_before, uncovered.by_tool())
            earlier = Counter(
                {k: n * (stop - start) // len(chunk) for k, n in chunk.passes.items()}
            )
            chunk.stats += _rows(_with_passes(result, earlier), tools_before, tracks, key, given_up)
            for offset in range(start, stop):
                chunk.stats[offset]["scene_start"] = offset in chunk.scene_starts
            if result.fallbacks:  # on the batch's first row, in video frame numbers
                for fallback in result.fallbacks:
                    fallback["frame"] += chunk.start + start
                chunk.stats[start]["memory_fallbacks"] = result.fallbacks
            reference = (result.delta[-1], tracks[-1])
            start = stop
        assert reference is not None
        self._carry_over = _CarryOver(chunk.stop, *reference, given_up, reached)
        return chunk

    def _warm(
        self,
        frames: np.ndarray,
        tracks: list[FrameTracks],
        reference: tuple[torch.Tensor, FrameTracks],
        given_up: set[str],
        hints: RungHints,
    ) -> AttackResult:
        """A segment of frames after a key frame (up to ``video.segment_frames``).

        The reference perturbation, carried along the tracks, is kept for the whole segment
        when its last frame's delivery shows no face. Otherwise one perturbation is learnt for
        the segment, on every ``video.sample_every``-th frame and the last, attacked together
        (``shared``): a perturbation learnt on one frame alone was found again by SCRFD on
        the very next frame of lp_d11, while one learnt on frames 0, 4, 8 and 12 also hid
        the face on frames 3, 9 and 12 (and 6 from all but one look). It must clear the
        sampled frames by ``video.segment_margin`` (see :meth:`AttackConfig.for_segments`).
        It is learnt in place, from the carried start of the segment's first frame, within
        that frame's windows: averaging starts carried onto each sampled frame blurred the
        pattern (their shifts differ), as resampling does, and the frames were then refined
        one by one. Every frame of the segment takes it, is checked alone, and is refined from
        it if that fails. ``hints``: per frame, the rungs of the ε ladder its tracked faces
        reached earlier in the scene, which they keep."""
        targets = [n for n in self.config.detectors if n not in given_up]
        size = frames.shape[1:3]
        carried = self._carried(reference, tracks)
        windows = self._windows(tracks, size)
        last = [len(frames) - 1]
        held = self.attack.hold(frames, carried, windows, self.roundtrip, last, targets, hints)
        if held is not None:
            return _with_passes(held, self.attack.take_hold_passes())
        stride = self.config.video.sample_every
        picks = sorted({*range(0, len(frames), stride), len(frames) - 1})
        joint = self._attack(
            self.segment_attack,
            frames[picks],
            init_delta=carried[:1].expand(len(picks), -1, -1, -1),
            windows=self._windows([tracks[0]] * len(picks), size),
            iterations=self.config.video.segment_iterations,
            roundtrip=self.roundtrip,
            targets=targets,
            shared=True,
            hints=[hints[p] for p in picks],
        )
        learnt = joint.delta[-1:]
        results = []
        for index in range(len(frames)):
            frame = frames[index : index + 1]
            window = self._windows(tracks[index : index + 1], size)
            hint = hints[index : index + 1]
            kept = self.attack.hold(frame, learnt, window, self.roundtrip, [0], targets, hint)
            results.append(kept or self._attack(
                self.warm_attack, frame, init_delta=learnt, windows=window,
                iterations=self.config.video.refine_iterations, roundtrip=self.roundtrip,
                targets=targets, start_failed=True, hints=hint,
            ))  # fmt: skip
        refined = sum(result.passes > 0 for result in results)
        log.debug("a segment of %d frames: %d passes learning its perturbation on %d, %d "
                  "refined after it", len(frames), joint.passes, len(picks), refined)  # fmt: skip
        fallbacks = joint.fallbacks + [  # in the segment's frame numbers
            {**fallback, "frame": fallback["frame"] + index}
            for index, result in enumerate(results)
            for fallback in result.fallbacks
        ]
        segment = _merge(results, fallbacks)
        segment.passes += joint.passes
        segment.passes_by_kind = dict(
            Counter(segment.passes_by_kind) + Counter(joint.passes_by_kind)
        )
        segment.iterations = max(segment.iterations, joint.iterations)
        return segment

    @staticmethod
    def _batch_stop(chunk: Chunk, start: int, size: int) -> int:
        """Frames attacked together never straddle a scene cut."""
        stop = min(len(chunk), start + size)
        return min([s for s in chunk.scene_starts if start < s < stop], default=stop)

    def _windows(self, tracks: list[FrameTracks], size: tuple[int, int]) -> list[Window] | None:
        """Attack windows from the tracker; ``None`` lets the attack find faces itself (a frame
        the tracker saw no face in, or whole-frame mode)."""
        if not self.config.region_mode or not all(tracks):
            return None
        height, width = size
        margin, minimum = self.config.region_margin, self.config.region_margin_min
        return [
            window
            for index, frame_tracks in enumerate(tracks)
            for window in track_windows(frame_tracks, index, height, width, margin, minimum)
        ]

    def _carried(
        self, reference: tuple[torch.Tensor, FrameTracks], tracks: list[FrameTracks]
    ) -> torch.Tensor:
        delta, source = reference
        config = self.config
        return torch.stack([
            carry_delta(delta, source, target, config.region_margin, config.region_margin_min,
                        keep_background=not config.region_mode)[0]
            for target in tracks
        ])  # fmt: skip


@dataclass
class _CarryOver:
    """Where a worker's last chunk ended, for the next chunk if it gets that one too: the
    last frame's perturbation and tracks, the detectors its scene gave up on, and the rung
    each track reached."""

    stop: int
    delta: torch.Tensor
    tracks: FrameTracks
    given_up: set[str]
    reached: dict[int, Rung]


def _hints(tracks: list[FrameTracks], reached: dict[int, Rung]) -> RungHints:
    """Per frame, each tracked face's box with the rung its track reached in the scene."""
    return [
        [(box, reached[track]) for track, box in frame_tracks.items() if track in reached]
        for frame_tracks in tracks
    ]


def _reach(reached: dict[int, Rung], result: AttackResult, tracks: list[FrameTracks]) -> None:
    """Raise each track's rung to the highest its face ended on in ``result`` (a face is the
    track whose box overlaps it most, by IoU ≥ 0.3)."""
    for frame_tracks, faces, rungs in zip(tracks, result.faces, result.rungs, strict=False):
        if not frame_tracks or not faces:
            continue
        ids = list(frame_tracks)
        boxes = np.array([frame_tracks[i] for i in ids], np.float64)
        for face, rung in zip(faces, rungs, strict=True):
            overlap = box_iou(face.box[None], boxes)[0]
            best = int(overlap.argmax())
            if overlap[best] >= MATCH_IOU:
                track = ids[best]
                reached[track] = max(reached.get(track, rung), rung)


def _with_passes(result: AttackResult, spent: Counter) -> AttackResult:
    """``result`` with ``spent`` passes (checks of held frames, a segment's shared attack, the
    report's count of the tools' other detectors) added to its counts."""
    result.passes += sum(spent.values())
    result.passes_by_kind = dict(Counter(result.passes_by_kind) + spent)
    return result


def _capped(attack: FacePoison, cap: int) -> FacePoison:
    """The same attack (same loaded detectors) with at most ``cap`` iterations a round."""
    config = attack.config
    reduced = config.model_copy(
        update={
            "iterations": min(config.iterations, cap),
            "repair_iterations": min(config.repair_iterations, cap),
            "min_iterations": min(config.min_iterations, cap),
        }
    )
    return FacePoison(reduced, attack.detectors, attack.device)


def _windows_between(windows: list[Window] | None, start: int, stop: int) -> list[Window] | None:
    """The windows of frames ``start:stop``, numbered from ``start``."""
    if windows is None:
        return None
    return [replace(w, frame=w.frame - start) for w in windows if start <= w.frame < stop]


def _merge(results: list[AttackResult], fallbacks: list[dict]) -> AttackResult:
    """One result for frames attacked in several batches (after an out-of-memory split)."""
    if len(results) == 1:
        (result,) = results
        result.fallbacks = fallbacks
        return result
    names = results[0].faces_before
    phases = dict.fromkeys(phase for r in results for phase in r.timings)
    return AttackResult(
        frames=np.concatenate([r.frames for r in results]),
        delta=torch.cat([r.delta for r in results]),
        faces_before={name: [n for r in results for n in r.faces_before[name]] for name in names},
        faces=[faces for r in results for faces in r.faces],
        faces_after={name: [n for r in results for n in r.faces_after[name]] for name in names},
        tools_before=_concatenated([r.tools_before for r in results]),
        tools_after=_concatenated([r.tools_after for r in results]),
        iterations=max(r.iterations for r in results),
        passes=sum(r.passes for r in results),
        passes_by_kind=dict(sum((Counter(r.passes_by_kind) for r in results), Counter())),
        repair_rounds=max(r.repair_rounds for r in results),
        timings={k: sum(r.timings.get(k, 0.0) for r in results) for k in phases},
        precision=results[0].precision,
        fallbacks=fallbacks,
        rungs=[rungs for r in results for rungs in r.rungs],
    )


def _concatenated(batches: list[ToolCounts]) -> ToolCounts:
    """Per-frame counts of consecutive batches, batch after batch (they share their looks)."""
    return {tool: [n for counts in batches for n in counts[tool]] for tool in batches[0]}


def _detectors_to_give_up(result: AttackResult, stalled_below: float) -> set[str]:
    """Detectors a scene's full key-frame attack hid none of the faces from *and* whose score
    loss it did not move (less than ``stalled_below`` of it removed; MTCNN on a large face at
    ε 6): refining them on every frame is wasted work.

    A detector that lost some faces stays attacked: giving up on one face left over abandoned
    the others for the whole scene (on a 1080p clip in fp16, H100, ``bench/gpu_stages.py``,
    RetinaFace was then still found on 143 of 186 faces). So does one whose loss fell: with
    one face on the key frame, "not hidden" alone gave up SCRFD, YOLO5Face and YuNet on
    ``lp_d11`` after a key frame that hid them on the raw pixels, and the clip's warm frames
    then hid 3 % of the faces from SCRFD."""
    return {
        name
        for name, found in result.faces_after.items()
        if sum(found)
        and sum(found) >= sum(result.faces_before[name])
        and result.loss_drop.get(name, 0.0) < stalled_below
    }


def _rows(
    result: AttackResult,
    tools_before: ToolCounts,
    tracks: list[FrameTracks],
    key: bool,
    given_up: set[str],
) -> list[dict[str, Any]]:
    """Per-frame report rows; a batch's iterations and passes are shared by its frames.
    ``tools_before``: faces per tool on the clean frames, by the ensemble's looks and by the
    tools' detectors outside it."""
    count = len(tracks)
    after = [{name: found[i] for name, found in result.faces_after.items()} for i in range(count)]
    return [
        {
            "key_frame": key,
            "faces_tracked": len(frame_tracks),
            # the faces protected on this frame (boxes), which the check of the file judges
            "faces": [face.to_json() for face in (result.faces[i] if result.faces else None) or []],
            # the rung of the ε ladder each of those faces ended on, and which of them had the
            # texture floor lifted (the cap on every pixel of the face)
            "epsilon": [rung.level for rung in result.rungs[i]] if result.rungs else [],
            "floor_lifted": [
                j for j, r in enumerate(result.rungs[i] if result.rungs else []) if r.flat
            ],
            "faces_before": {name: found[i] for name, found in result.faces_before.items()},
            # None: a frame that kept its carried perturbation without its own check
            "faces_after_roundtrip": None if None in after[i].values() else after[i],
            "tools_before": {tool: found[i] for tool, found in tools_before.items()},
            "iterations": result.iterations,
            "passes": result.passes / count,
            "passes_by_kind": {kind: n / count for kind, n in result.passes_by_kind.items()},
            "repair_rounds": result.repair_rounds,
            "given_up": sorted(given_up),
        }
        for i, frame_tracks in enumerate(tracks)
    ]
