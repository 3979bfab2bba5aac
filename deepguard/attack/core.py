"""FacePoison: an ensemble, L∞-bounded, sign-gradient attack that hides faces from detectors.

One core serves images and video: it takes a batch of frames (an image is a batch of one),
an optional warm-start perturbation (the previous video frame's) and optional face windows
(from the tracker), and returns the protected uint8 frames.

The faces to protect are found on the clean frames (:func:`~.verification.protected_faces`).
Success is judged per face, per tool, on the copies a tool really gets: the frames rounded to
8 bits and saved (the caller's codec), then sent through each delivery chain the config names
(:mod:`~.delivery`: the saved file, a platform's 1080-pixel JPEG, ...). While a covered tool
still finds a protected face on one of them and budget remains, it keeps iterating
(:mod:`~.optimiser`); then it shrinks the perturbation as far as that verdict allows.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from deepguard.attack.budget import FaceBudgets, Rung, RungHints
from deepguard.attack.config import AttackConfig
from deepguard.attack.delivery import Chain, ChainModel, OutputCodec, ToolResize, parse_chains
from deepguard.attack.optimiser import Optimiser, Plan, Run, importance_for, loss_drops
from deepguard.attack.optimiser import trace_ends as _trace_ends
from deepguard.attack.perturbation import (
    Perturbation,
    finish_frames,
    frames_to_tensor,
    tensor_to_frames,
)
from deepguard.attack.precision import Autocast
from deepguard.attack.profiles import judged_profiles
from deepguard.attack.regions import Window, detector_views, face_windows
from deepguard.attack.verification import (
    Faces,
    Look,
    Verdict,
    detect_looks,
    plan_looks,
    protected_faces,
)
from deepguard.errors import DeepguardError
from deepguard.models.base import Detections, FaceDetector
from deepguard.models.registry import load_detector, load_detectors
from deepguard.progress import Progress, detector_phase

log = logging.getLogger(__name__)

#: a codec round-trip applied to the rounded output before verification (N×H×W×3 uint8)
Roundtrip = Callable[[np.ndarray], np.ndarray]

__all__ = [
    "AttackResult",
    "FacePoison",
    "Progress",
    "Roundtrip",
    "frames_to_tensor",
    "tensor_to_frames",
]


@dataclass
class AttackResult:
    """What one call of :meth:`FacePoison.protect` produced and what it cost."""

    frames: np.ndarray  # N×H×W×3 uint8, the protected pixels
    delta: Tensor  # N×3×H×W float, the perturbation before rounding (for warm starts)
    faces_before: dict[str, list[int]]  # detector → protected faces it finds per frame, clean
    #: detector → protected faces found per frame, delivered output (None: a frame
    #: :meth:`FacePoison.hold` did not check)
    faces_after: dict[str, list[int | None]]
    #: tool profile → protected faces per frame, through the ensemble's looks (clean /
    #: delivered, worst chain; None as in ``faces_after``)
    tools_before: dict[str, list[int]] = field(default_factory=dict)
    tools_after: dict[str, list[int | None]] = field(default_factory=dict)
    iterations: int = 0
    passes: int = 0  # detector passes of every kind
    #: the passes by kind: attack (forward+backward), check, shrink, faces (clean detection)
    passes_by_kind: dict[str, int] = field(default_factory=dict)
    repair_rounds: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"  # of the attack's detector passes (verification is always fp32)
    #: out-of-memory fallbacks taken to finish (see :mod:`deepguard.attack.memory`)
    fallbacks: list[dict] = field(default_factory=list)
    #: detector → the share of its score loss the iterations removed (0: none, 1: all)
    loss_drop: dict[str, float] = field(default_factory=dict)
    #: the faces protected, per frame, and the verdicts on the clean and protected copies
    faces: Faces = field(default_factory=list)
    before: Verdict | None = None
    after: Verdict | None = None
    #: per frame, the rung of the ε ladder each of its faces ended on (as ``faces``)
    rungs: list[list[Rung]] = field(default_factory=list)

    @property
    def hidden(self) -> bool:
        return all(not any(counts) for counts in self.faces_after.values())


def _without_cudnn(method: Callable) -> Callable:
    """Run ``method`` with cuDNN off when the attack is on CUDA.

    The attack's views change shape every iteration (random context, randomised resizes),
    and cuDNN builds a new execution plan for each new shape. Measured on an H100, on a 1080p
    photo with `balanced` and 4 iterations (torch 2.11, cuDNN 9.19): 48.9 s with cuDNN and
    2.0 s with PyTorch's own convolution kernels.
    """

    @functools.wraps(method)
    def wrapper(self: FacePoison, *args, **kwargs):
        if self.device.type != "cuda":
            return method(self, *args, **kwargs)
        previous = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = False
        try:
            return method(self, *args, **kwargs)
        finally:
            torch.backends.cudnn.enabled = previous

    return wrapper


class FacePoison:
    """The attack, bound to an ensemble of loaded detectors."""

    def __init__(
        self,
        config: AttackConfig,
        detectors: Sequence[FaceDetector] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.detectors = list(detectors or load_detectors(config.detectors, str(self.device)))
        self.table = {detector.name: detector for detector in self.detectors}
        self.profiles = judged_profiles(config.tools, config.extra_tools, self.table)
        self.chains = parse_chains(config.deliver)
        self.autocast = Autocast(config.precision, self.device)
        self.optimiser = Optimiser(config, self.table, self.autocast)
        self._looks: dict[tuple[int, int], list[Look]] = {}
        #: detector passes spent by :meth:`hold` since the caller last took them
        #: (:meth:`take_hold_passes`): a held frame has no attack result to carry them
        self._hold_passes: Counter = Counter()
        #: detectors that only tool reports use (a profile's detector outside the ensemble)
        self._others: dict[str, FaceDetector] | None = None

    # -- looks and verdicts ----------------------------------------------------------------

    def looks(self, height: int, width: int) -> list[Look]:
        """How the ensemble is judged on a ``height``×``width`` picture: every detector
        natively at the config's scales, and under every enabled tool profile that runs it."""
        key = (height, width)
        if key not in self._looks:
            scales, natives = self.config.scales, list(self.table)
            if not scales:  # a detector no covered tool runs is looked at natively
                judged = {n for p in self.profiles if set(p.detectors) <= set(self.table)
                          for n in p.detectors}  # fmt: skip
                scales, natives = [1.0], [n for n in self.table if n not in judged]
            self._looks[key] = plan_looks(self.table, self.profiles, height, width, scales, natives)
        return self._looks[key]

    def covered_tools(self, active: Sequence[str] | None = None) -> list[str]:
        """The tools whose detectors are all attacked (all of ``active``'s): the verdict is
        theirs."""
        attacked = set(self.table if active is None else active)
        return [p.name for p in self.profiles if set(p.detectors) <= attacked]

    def faces_of(
        self, frames: np.ndarray, extra: Sequence[np.ndarray] | None = None
    ) -> tuple[Faces, dict[Look, list[Detections]]]:
        """The faces to protect on clean frames, and every look's clean detections."""
        found = detect_looks(self.table, self.looks(*frames.shape[1:3]), frames)
        return protected_faces(found, len(frames), extra), found

    def copies(
        self, frames: np.ndarray, roundtrip: Roundtrip | None, chains: Sequence[Chain] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """What a tool gets on each chain: the saved file (``roundtrip`` of ``frames``) sent
        through the chain; and how much smaller than ``frames`` each copy is."""
        saved = roundtrip(frames) if roundtrip else frames
        copies, scales = {}, {}
        for chain in chains or self.chains:
            copy = saved if chain.identity else chain.deliver(saved)
            copies[chain.name] = copy
            scales[chain.name] = copy.shape[2] / frames.shape[2]
        return copies, scales

    def judge(
        self,
        frames: np.ndarray,
        faces: Faces,
        roundtrip: Roundtrip | None = None,
        margin: float = 1.0,
        chains: Sequence[Chain] | None = None,
        table: dict[str, FaceDetector] | None = None,
        pairs: Collection[tuple[str, Look]] | None = None,
    ) -> Verdict:
        """Every look at every chain's copy of ``frames`` (saved through ``roundtrip``),
        judged against ``faces`` (detections kept down to ``margin`` × each threshold);
        ``pairs``: only these (chain, look) pairs (a partial check)."""
        chains = [
            c for c in chains or self.chains if pairs is None or any(c.name == p for p, _ in pairs)
        ]
        copies, scales = self.copies(frames, roundtrip, chains)
        detectors = table or self.table
        verdict = Verdict(faces, margin=margin)
        for chain, copy in copies.items():
            if table is None:
                looks = self.looks(*copy.shape[1:3])
            else:
                looks = plan_looks(table, self.profiles, *copy.shape[1:3], native_detectors=())
            if pairs is not None:
                looks = [look for look in looks if (chain, look) in pairs]
            verdict.found[chain] = detect_looks(detectors, looks, copy, margin, scales[chain])
        return verdict

    def judge_uncovered(
        self, frames: np.ndarray, faces: Faces, roundtrip: Roundtrip | None = None
    ) -> Verdict:
        """The tools' detectors outside the ensemble on the same copies, for reports only: the
        attack does not aim at them. A detector whose weights cannot be had is left out."""
        if self._others is None:
            self._others = {}
            wanted = {n for p in self.profiles for n in p.detectors} - set(self.table)
            for name in sorted(wanted):
                try:
                    self._others[name] = load_detector(name, str(self.device))
                except DeepguardError as error:
                    log.warning("tool reports leave out %s: %s", name, error)
        return self.judge(frames, faces, roundtrip, table=self._others)

    def count_faces(self, frames: np.ndarray) -> dict[str, list[int]]:
        """Faces per frame for each detector on clean frames: the most its looks find."""
        faces, _ = self.faces_of(frames)
        return self.judge(frames, faces, chains=parse_chains("saved")).by_detector()

    def verify(
        self, frames: np.ndarray, roundtrip: Roundtrip | None, faces: Faces | None = None
    ) -> dict[str, list[int]]:
        """Protected faces still found on any delivered copy of ``frames`` (per detector, per
        frame); with ``faces`` unknown, every detection counts."""
        faces = faces if faces is not None else [None] * len(frames)
        return self.judge(frames, faces, roundtrip).by_detector()

    def clear(self, verdict: Verdict, active: Sequence[str], margin: float = 1.0) -> bool:
        """Does ``verdict`` hide every protected face from every covered tool of ``active``,
        and from the native looks at them?"""
        return not self.failures(verdict, active, margin)

    def failures(
        self, verdict: Verdict, active: Sequence[str], margin: float = 1.0
    ) -> set[tuple[str, str, int, int]]:
        """(who, chain, frame, face) for every protected face a covered tool of ``active`` or
        a native look at one of them finds (at ``margin`` × its threshold)."""
        found = verdict.found_pairs(self.covered_tools(active), margin)
        for chain, looks in verdict.found.items():
            for look in looks:
                if look.native and look.detector in active:
                    name = f"{look.detector}@{look.scale:g}"
                    for frame, finding in enumerate(verdict.look(look, chain, margin)):
                        found |= {(name, chain, frame, face) for face in finding.faces}
        return found

    # -- a carried perturbation --------------------------------------------------------------

    def hold(
        self,
        frames: np.ndarray,
        carried: Tensor,
        windows: list[Window] | None,
        roundtrip: Roundtrip | None,
        sample: Sequence[int],
        targets: Sequence[str] | None = None,
        hints: RungHints | None = None,
    ) -> AttackResult | None:
        """``carried`` (a perturbation brought along from earlier frames) applied as it is,
        when no target finds a protected face on the delivery of the ``sample`` frames;
        ``None`` when one does and the frames need refining. Judged at the looks' thresholds,
        not with the early stop's margin: the harsher lone-frame codec of the check already
        leaves room.

        No attack pass: a clip's frames between two samples cost one check per sample
        instead of a warm-started attack each. The unsampled frames' faces after delivery are
        not known here (``None``); the check of the written file counts them.

        The faces keep the rungs of the ε ladder they reached: ``hints`` (a tracked face's
        rung in its scene), and at least the rung ``carried`` uses around them; the bound is
        not rebuilt from the first rung, which would clip the carried perturbation."""
        x = frames_to_tensor(frames, self.device)
        faces, found = self.faces_of(frames)
        self._hold_passes["faces"] += len(self.looks(*frames.shape[1:3])) * len(frames)
        windows = self._windows(x, faces) if windows is None else windows
        carried = carried.to(x.device)
        budgets = self._budgets(frames, faces, windows)
        budgets.start_at(hints, carried)
        bound = budgets.bound()
        delta = _clamped(carried, bound)
        out = finish_frames(x, frames, delta, bound)
        active = [d.name for d in self.detectors if targets is None or d.name in targets]
        picked = list(sample)
        after = self.judge(out[picked], [faces[i] for i in picked], roundtrip)
        self._hold_passes["check"] += self._check_passes(out[picked], self.chains)
        if not self.clear(after, active):
            return None
        before = self._before(frames, faces, found, self._hold_passes)
        tools_before = before.by_tool()
        return AttackResult(
            frames=out,
            delta=delta,
            faces_before=before.by_detector(),
            faces_after={name: [None] * len(frames) for name in self.table},
            tools_before=tools_before,
            tools_after={tool: [None] * len(frames) for tool in tools_before},
            precision=self.autocast.name,
            faces=faces,
            before=before,
            rungs=budgets.per_frame(len(frames)),
        )

    # -- the attack ------------------------------------------------------------------------

    @_without_cudnn
    def protect(
        self,
        frames: np.ndarray,
        init_delta: Tensor | None = None,
        windows: list[Window] | None = None,
        iterations: int | None = None,
        roundtrip: Roundtrip | None = None,
        progress: Progress | None = None,
        targets: Sequence[str] | None = None,
        start_failed: bool = False,
        shared: bool = False,
        codec: OutputCodec | None = None,
        extra_faces: Sequence[np.ndarray] | None = None,
        hints: RungHints | None = None,
    ) -> AttackResult:
        """Protect N×H×W×3 uint8 RGB frames. See the module docstring.

        ``targets`` names the detectors to attack and to verify against (default: all). A
        video gives up on a detector for the rest of a scene once a full attack on the scene's
        first frame could not hide the face from it; faces are still counted for every one.
        ``start_failed``: the caller saw ``init_delta`` fail its delivery check already
        (:meth:`hold`), so it is not checked again before the first iteration. ``shared``: the
        frames are attacked with one perturbation, their mean (frames of one scene, where the
        face barely moves): it then holds on the frames between them too. ``codec``: how the
        output is saved (a photo's JPEG), which the attack optimises through; ``roundtrip``
        is its real counterpart for the check. ``extra_faces``: boxes to protect besides the
        faces found on the clean frames (the tracker's, per frame). ``hints``: rungs of the ε
        ladder faces start on (a tracked face's, reached earlier in its scene); a face also
        starts at least on the rung ``init_delta`` uses around it.

        Each face starts on its rung; after each round, every face that a covered tool still
        finds on a delivered copy climbs one rung and the next round attacks it at the new
        bound, while the faces already hidden keep theirs (:mod:`~.budget`).
        """
        config = self.config
        active = [d for d in self.detectors if targets is None or d.name in targets]
        names = [d.name for d in active]
        started = time.perf_counter()
        seed = config.seed if config.seed is not None else random.randrange(2**31)
        rng = random.Random(seed)
        generator = torch.Generator().manual_seed(seed)
        x = frames_to_tensor(frames, self.device)
        timings: dict[str, float] = {}
        passes: Counter = Counter()

        tick = time.perf_counter()
        height, width = frames.shape[1:3]
        faces, found = self.faces_of(frames, extra_faces)
        passes["faces"] += len(self.looks(height, width)) * len(frames)
        before = self._before(frames, faces, found, passes)
        timings["detect"] = time.perf_counter() - tick
        if not any(faces):  # no face to protect
            return AttackResult(frames.copy(), torch.zeros_like(x), before.by_detector(),
                                before.by_detector(), before.by_tool(), before.by_tool(),
                                passes=sum(passes.values()), passes_by_kind=dict(passes),
                                timings=timings, precision=self.autocast.name, faces=faces,
                                before=before, after=before,
                                rungs=[[] for _ in faces])  # fmt: skip
        if windows is None:
            windows = self._windows(x, faces) if config.region_mode else _whole(x)
        views = detector_views(windows, height, width, config.view_min_size, config.whole_fraction)
        tick = time.perf_counter()
        tool_looks = (
            [look for look in self.looks(height, width) if not look.crops]
            if config.feature_looks == "all" and len(frames) == 1
            else []
        )
        importance = (
            importance_for(config, x, views, generator, active, passes, tool_looks)
            if config.feature_loss
            else {}
        )
        timings["importance"] = time.perf_counter() - tick
        budget = iterations or config.iterations
        # a later round is never longer than the first: --iterations 1 stays a quick run
        repair_budget = min(config.repair_iterations, budget)
        budgets = self._budgets(frames, faces, windows, shared)
        budgets.start_at(hints, init_delta)
        bound = budgets.bound()
        start = init_delta
        if start is None and config.random_start:
            noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device)
            start = noise * config.random_start * bound
        perturbation = Perturbation(bound, config.delta_sizes, start, config.momentum, shared)
        run = Run(
            x=x,
            frames=frames,
            faces=faces,
            detectors=active,
            plans=[
                Plan(c, c.size(height, width), self.looks(*c.size(height, width)))
                for c in self.chains
            ],
            perturbation=perturbation,
            views=views,
            importance=importance,
            model=ChainModel(
                codec,
                config.eot_jpeg_quality if config.eot else None,
                config.eot_probability,
                rng,
                config.platform_size_jitter,
                config.platform_quality_jitter,
            ),
            resize=ToolResize(
                rng, config.tool_scale_jitter, config.tool_pad, config.tool_filter_mix
            ),
            rng=rng,
            progress=progress,
            total_budget=budget + config.repair_rounds * repair_budget,
            roundtrip=roundtrip,
            through_codec=_through(roundtrip) if roundtrip and config.eot_delivery else None,
            passes=passes,
        )
        state = _Checked()

        def clear(run: Run, full: bool = False) -> bool:
            """Every judged face missed by the early stop's margin: a perturbation stopped
            at the bare threshold breaks under the next resize or codec.

            Between the round's first check and its verdict, a check first looks only where
            the last one saw a face and at a third of the other (chain, look) pairs in turn:
            one that still finds a face settles "not yet" for a fraction of the passes; only
            when none does is every pair checked, and that full check decides (``full``:
            that one at once, as at the end of a round, where the verdict is needed)."""
            pairs = None if full else _pairs_to_check(run, state.checks)
            state.checks += 1
            run.checked_at = run.iterations
            if pairs is not None:
                partial = self.check(run, pairs=pairs)
                seen = _failing_looks(partial, config.verify_margin)
                run.failing = (run.failing - pairs) | seen
                if seen:
                    return False
            state.verdict = self.check(run)
            state.at = run.iterations
            run.failing = _failing_looks(state.verdict, config.verify_margin)
            return self.clear(state.verdict, names, config.verify_margin)

        tick = time.perf_counter()
        rounds = 0
        # a warm start (the previous video frame's perturbation) often hides the face already
        skip_first = init_delta is not None and not start_failed and clear(run)
        round_starts: list[int] = []
        while True:
            if rounds or not skip_first:
                round_starts.append(run.iterations)
                run.round_start = run.iterations
                self.optimiser.iterate(run, budget, clear)
            if state.at != run.iterations or state.verdict is None:
                clear(run, full=True)
            assert state.verdict is not None
            still_found = self.failures(state.verdict, names)
            if rounds >= 1 and config.give_up_ratio:  # after the main iterations + a repair
                run.detectors = self._without_stalled(run, state.verdict, round_starts)
                names = [d.name for d in run.detectors]
            last = not still_found or rounds >= config.repair_rounds or not run.detectors
            self._report_faces(progress, before, state.verdict)
            if last:
                break
            rounds += 1
            budget = repair_budget
            climbed = budgets.climb({failure[2:] for failure in still_found})
            if climbed:
                run.perturbation.rebound(budgets.bound())
            log.info("faces still found after round %d: %s; repairing, %d faces a rung up",
                     rounds, state.verdict.by_tool(), len(climbed))  # fmt: skip
        after = state.verdict
        if config.shrink_steps and run.iterations:  # give back what the sign steps inflated
            after = self._shrink(run, after, names, budgets)
        delta = run.perturbation.value()
        out = finish_frames(x, frames, delta, run.perturbation.bound)
        timings["attack"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - started
        return AttackResult(
            frames=out,
            delta=delta,
            faces_before=before.by_detector(),
            faces_after=after.by_detector(),
            tools_before=before.by_tool(),
            tools_after=after.by_tool(),
            iterations=run.iterations,
            passes=sum(run.passes.values()),
            passes_by_kind=dict(run.passes),
            repair_rounds=rounds,
            timings=timings,
            precision=self.autocast.name,
            loss_drop=loss_drops(run.losses),
            faces=faces,
            before=before,
            after=after,
            rungs=budgets.per_frame(len(frames)),
        )

    def take_hold_passes(self) -> Counter:
        """The detector passes :meth:`hold` spent since the last call, by kind."""
        spent, self._hold_passes = self._hold_passes, Counter()
        return spent

    def _before(
        self, frames: np.ndarray, faces: Faces, found: dict[Look, list[Detections]],
        passes: Counter,
    ) -> Verdict:  # fmt: skip
        """The clean frames' verdict on every chain (the saved one is ``found`` already)."""
        before = Verdict(faces, {"saved": found})
        others = [c for c in self.chains if c.name != "saved"]
        if others:
            before = before.merge(self.judge(frames, faces, chains=others))
            passes["faces"] += self._check_passes(frames, others)
        return before

    def check(
        self,
        run: Run,
        scale: float | Tensor = 1.0,
        kind: str = "check",
        pairs: Collection[tuple[str, Look]] | None = None,
    ) -> Verdict:
        """The real check: ``scale`` (a number, or one per pixel) × the perturbation rounded,
        saved and sent through every chain, every look at the copies (or only ``pairs``),
        judged per face with the early stop's margin."""
        delta = run.perturbation.value() * scale
        out = finish_frames(run.x, run.frames, delta, run.perturbation.bound)
        if pairs is None:
            run.passes[kind] += self._check_passes(run.frames, self.chains)
        else:
            run.passes[kind] += len(pairs) * len(run.frames)
        return self.judge(out, run.faces, run.roundtrip, self.config.verify_margin, pairs=pairs)

    def _check_passes(self, frames: np.ndarray, chains: Sequence[Chain]) -> int:
        height, width = frames.shape[1:3]
        return sum(len(self.looks(*c.size(height, width))) for c in chains) * len(frames)

    def _shrink(
        self, run: Run, verdict: Verdict, active: Sequence[str], budgets: FaceBudgets
    ) -> Verdict:
        """Scale the perturbation down, face by face, as far as delivery keeps what it
        achieved at full strength; returns the verdict at the chosen scales.

        Sign steps spend the whole budget; most of it is rarely needed, and a few bisection
        steps on the perturbation's scale buy back image quality. Each face group (a face;
        the same face on every frame of a shared perturbation) has its own scale: a face
        hidden easily need not carry the budget of a hard one next to it. All of them are
        bisected at once, each judged on its own faces, on every chain. A tool that misses a
        face at full strength must keep missing it by the early stop's margin (shrunk to the
        bare threshold, the perturbation breaks under the next codec or warm start), and no
        tool may find a face it did not find at full strength. Frames that share one
        perturbation end with one scale map, so they still share it (no flicker).
        """
        full = self.failures(verdict, active)
        weights = budgets.group_masks(run.x)
        groups = len(budgets.groups)
        if not groups:
            return verdict
        low, high = [0.0] * groups, [1.0] * groups
        delta = run.perturbation.value()
        margin = self.config.verify_margin
        shared = run.perturbation.shared
        for _ in range(self.config.shrink_steps):
            middle = [(a + b) / 2 for a, b in zip(low, high, strict=True)]
            judged = self.check(run, _scale_map(weights, middle, shared), kind="shrink")
            new = self.failures(judged, active, margin) - full
            broken = {budgets.group_of(failure[2:]) for failure in new}
            for group in range(groups):
                if group in broken:
                    low[group] = middle[group]
                else:
                    high[group] = middle[group]
        if all(value == 1.0 for value in high):  # no face shrank: the verdict is known
            return verdict
        scale = _scale_map(weights, high, shared)
        kept = self.check(run, scale, kind="shrink")
        if self.failures(kept, active) - full:  # faces that interact: keep full strength
            log.debug("the shrunk faces together failed; kept at full strength")
            return verdict
        log.debug("perturbation shrunk to %s of its size per face", [round(h, 2) for h in high])
        run.perturbation.fix(delta * scale)
        return kept

    def _without_stalled(
        self, run: Run, verdict: Verdict, round_starts: list[int]
    ) -> list[FaceDetector]:
        """Leave out of further repair rounds a detector that still finds a face and whose loss
        fell by less than ``give_up_ratio`` over the last two rounds: more of the same budget
        will not hide it."""
        kept = []
        since = round_starts[-2] if len(round_starts) > 1 else 0
        counts = verdict.by_detector()
        for detector in run.detectors:
            trace = run.losses.get(detector.name, [])[since:]
            visible = sum(counts.get(detector.name, [0])) > 0
            first, last = _trace_ends(trace)
            stalled = len(trace) > 3 and last > (1 - (self.config.give_up_ratio or 0)) * first
            if visible and stalled:
                log.info("%s: loss %.3g → %.3g; left out of the repair rounds", detector.name,
                         first, last)  # fmt: skip
            else:
                kept.append(detector)
        return kept

    @staticmethod
    def _report_faces(progress: Progress | None, before: Verdict, after: Verdict) -> None:
        if progress:
            found_before = before.by_detector()
            for name, found in after.by_detector().items():
                progress(
                    detector_phase("faces", name), sum(found), sum(found_before.get(name, [0]))
                )

    # -- where the perturbation goes ---------------------------------------------------------

    def _windows(self, x: Tensor, faces: Faces) -> list[Window]:
        """Windows around the protected faces, grown by the region margins."""
        height, width = x.shape[-2:]
        windows: list[Window] = []
        for index, frame_faces in enumerate(faces):
            if not frame_faces:
                continue
            boxes = np.stack([face.box for face in frame_faces])
            margin, least = self.config.region_margin, self.config.region_margin_min
            windows += face_windows(boxes, index, height, width, margin, least)
        return windows

    def _budgets(
        self, frames: np.ndarray, faces: Faces, windows: list[Window], shared: bool = False
    ) -> FaceBudgets:
        """Every face on the first rung of the ε ladder, the perturbation allowed in
        ``windows`` (see :class:`~.budget.FaceBudgets`)."""
        config = self.config
        return FaceBudgets(
            config.rungs, frames, faces, windows, margin=config.region_margin,
            least_margin=config.region_margin_min, fade=config.edge_fade,
            texture=config.texture_budget, shared=shared, device=self.device,
        )  # fmt: skip


@dataclass
class _Checked:
    """The latest full check of a run, the iteration it was made at, and how many checks
    (full or partial) the run has made."""

    verdict: Verdict | None = None
    at: int = -1
    checks: int = 0


def _pairs_to_check(run: Run, count: int) -> set[tuple[str, Look]] | None:
    """The (chain, look) pairs a partial check looks at: those the last check saw find a
    face, and every third of the others in turn (``count``: the checks made so far); ``None``
    (all of them) for a run's first check, and when that is most of them anyway."""
    if run.checked_at < 0:
        return None
    pairs = [(plan.chain.name, look) for plan in run.plans for look in plan.looks]
    chosen = {pair for index, pair in enumerate(pairs) if index % 3 == count % 3}
    chosen |= run.failing & set(pairs)
    return chosen if len(chosen) < len(pairs) else None


def _through(roundtrip: Roundtrip) -> Callable[[Tensor], Tensor]:
    """The real codec on a tensor of frames (no gradient: used straight through)."""

    def coded(adversarial: Tensor) -> Tensor:
        return frames_to_tensor(roundtrip(tensor_to_frames(adversarial)), adversarial.device)

    return coded


def _failing_looks(verdict: Verdict, margin: float) -> set[tuple[str, Look]]:
    """(chain, look) of every look that finds a protected face by ``margin``."""
    return {
        (chain, look)
        for chain, looks in verdict.found.items()
        for look in looks
        if any(finding.faces for finding in verdict.look(look, chain, margin))
    }


def _scale_map(weights: Tensor, scales: Sequence[float], shared: bool = False) -> Tensor:
    """N×1×H×W: each pixel's scale, the groups' scales weighted by how much it belongs to
    each (a pixel of no face's window keeps the largest). ``shared``: one map for every
    frame, the largest of theirs."""
    values = torch.tensor(list(scales), dtype=weights.dtype)
    values = values.to(weights.device).view(-1, 1, 1, 1, 1)
    total = weights.sum(0)
    mixed = (weights * values).sum(0) / total.clamp(min=1e-6)
    scale = torch.where(total > 0, mixed, values.max())
    return scale.amax(0, keepdim=True).expand_as(scale) if shared else scale


def _clamped(delta: Tensor, bound: Tensor) -> Tensor:
    return torch.maximum(torch.minimum(delta, bound), -bound)


def _whole(x: Tensor) -> list[Window]:
    height, width = x.shape[-2:]
    return [Window(i, 0, 0, width, height) for i in range(len(x))]
