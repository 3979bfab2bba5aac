"""FacePoison: an ensemble, L∞-bounded, sign-gradient attack that hides faces from detectors.

One core serves images and video: it takes a batch of frames (an image is a batch of one),
an optional warm-start perturbation (the previous video frame's) and optional face windows
(from the tracker), and returns the protected uint8 frames. Success is judged on what the
user actually receives: the frames rounded to 8 bits, passed through the caller's codec
round-trip (JPEG for photos, the video encoder for clips) and, optionally, re-compressed the
way a sharing site would. While a face is still found and budget remains, it keeps iterating.
"""

from __future__ import annotations

import functools
import io
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.ops import nms

from deepguard.attack.config import AttackConfig
from deepguard.attack.losses import FeatureImportance, score_suppression_loss
from deepguard.attack.precision import Autocast
from deepguard.attack.profiles import enabled_profiles
from deepguard.attack.regions import Window, detector_views, face_windows, merge_windows
from deepguard.attack.transforms import RandomTransform, quantize_uint8, resize
from deepguard.attack.verification import (
    Look,
    Verdict,
    detect_looks,
    judge,
    plan_looks,
    tool_size,
)
from deepguard.errors import DeepguardError
from deepguard.models.base import FaceDetector
from deepguard.models.registry import load_detector, load_detectors
from deepguard.progress import Progress, detector_phase

log = logging.getLogger(__name__)

#: a codec round-trip applied to the rounded output before verification (N×H×W×3 uint8)
Roundtrip = Callable[[np.ndarray], np.ndarray]

_TINY = 1e-12


@dataclass
class AttackResult:
    """What one call of :meth:`FacePoison.protect` produced and what it cost."""

    frames: np.ndarray  # N×H×W×3 uint8, the protected pixels
    delta: Tensor  # N×3×H×W float, the perturbation before rounding (for warm starts)
    faces_before: dict[str, list[int]]  # detector → faces per frame, clean input
    #: detector → faces per frame, delivered output (None: a frame :meth:`FacePoison.hold`
    #: did not check)
    faces_after: dict[str, list[int | None]]
    #: tool profile → faces per frame, through the ensemble's looks (clean / delivered;
    #: None as in ``faces_after``)
    tools_before: dict[str, list[int]] = field(default_factory=dict)
    tools_after: dict[str, list[int | None]] = field(default_factory=dict)
    iterations: int = 0
    passes: int = 0  # detector forward+backward passes
    repair_rounds: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"  # of the attack's detector passes (verification is always fp32)
    #: out-of-memory fallbacks taken to finish (see :mod:`deepguard.attack.memory`)
    fallbacks: list[dict] = field(default_factory=list)
    #: detector → the share of its score loss the iterations removed (0: none, 1: all)
    loss_drop: dict[str, float] = field(default_factory=dict)

    @property
    def hidden(self) -> bool:
        return all(not any(counts) for counts in self.faces_after.values())


@dataclass
class _Run:
    """The state of one ``protect`` call, shared by its phases."""

    x: Tensor  # N×3×H×W float, the clean frames
    frames: np.ndarray  # the clean frames as uint8
    detectors: list[FaceDetector]  # the ones attacked in this call
    roundtrip: Roundtrip | None
    windows: list[Window]  # where the perturbation may go
    views: list[Window]  # what the detectors look at
    mask: Tensor
    budget: Tensor  # N×1×H×W, the L∞ budget of every pixel in levels (ε, region_epsilon)
    bound: Tensor  # the budget faded out towards the windows' edges: what the pixels may use
    delta: Tensor
    momentum: Tensor
    importance: dict[tuple, FeatureImportance]
    transform: RandomTransform
    rng: random.Random
    progress: Progress | None
    total_budget: int
    looks: list[Look]  # how the ensemble and the tools look at these frames
    iterations: int = 0
    passes: int = 0
    # detector → its score loss summed over views, per iteration (to spot a stalled one)
    losses: dict[str, list[float]] = field(default_factory=dict)
    # the iteration each round (main, then repairs) started at
    round_starts: list[int] = field(default_factory=list)
    # look → the highest score it saw in this iteration's views: the cheap check
    peaks: dict[Look, float] = field(default_factory=dict)
    shared: bool = False  # one perturbation for all frames (see FacePoison.protect)


def frames_to_tensor(frames: np.ndarray, device: torch.device | str) -> Tensor:
    """N×H×W×3 uint8 RGB → N×3×H×W float 0..255."""
    writable = np.require(frames, requirements=["C", "W"])  # copies only read-only input
    return torch.from_numpy(writable).to(device).permute(0, 3, 1, 2).float()


def tensor_to_frames(x: Tensor) -> np.ndarray:
    return x.detach().round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()


def jpeg_roundtrip_uint8(frames: np.ndarray, quality: int) -> np.ndarray:
    """Real (libjpeg) re-compression of N×H×W×3 uint8 frames, as a sharing site would do."""
    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, "JPEG", quality=quality)
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return np.stack(out)


def _without_cudnn(method: Callable) -> Callable:
    """Run ``method`` with cuDNN off when the attack is on CUDA.

    The attack's views change shape every iteration (random context, EOT rescaling), and
    cuDNN builds a new execution plan for each new shape. Measured on an H100, on a 1080p
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
        self.profiles = enabled_profiles(config.tools)
        self.autocast = Autocast(config.precision, self.device)
        #: per detector, the fp16 loss scale (lowered when a scaled gradient overflows)
        self._loss_scales: dict[str, float] = {}
        self._looks: dict[tuple[int, int], list[Look]] = {}
        #: detectors that only tool reports use (a profile's detector outside the ensemble)
        self._others: dict[str, FaceDetector] | None = None

    # -- detection -------------------------------------------------------------------------

    def looks(self, height: int, width: int) -> list[Look]:
        """How the ensemble is judged on a ``height``×``width`` frame: every detector natively
        at the config's scales, and under every enabled tool profile that runs it."""
        key = (height, width)
        if key not in self._looks:
            self._looks[key] = plan_looks(
                self.table, self.profiles, height, width, self.config.scales
            )
        return self._looks[key]

    def judge(self, versions: list[np.ndarray]) -> Verdict:
        """Faces the ensemble's looks find on the worst of ``versions`` (always fp32)."""
        height, width = versions[0].shape[1:3]
        return judge(self.table, self.looks(height, width), versions)

    def judge_uncovered(self, versions: list[np.ndarray]) -> Verdict:
        """Faces found by the tools' detectors outside the ensemble, for reports only: the
        attack does not aim at them. A detector whose weights cannot be had is left out."""
        if self._others is None:
            self._others = {}
            wanted = {n for p in self.profiles for n in p.detectors} - set(self.table)
            for name in sorted(wanted):
                try:
                    self._others[name] = load_detector(name, str(self.device))
                except DeepguardError as error:
                    log.warning("tool reports leave out %s: %s", name, error)
        height, width = versions[0].shape[1:3]
        looks = plan_looks(self._others, self.profiles, height, width, native_detectors=())
        return judge(self._others, looks, versions)

    def count_faces(self, frames: np.ndarray) -> dict[str, list[int]]:
        """Faces per frame for each detector: the most any of its looks finds."""
        return self.judge([frames]).by_detector()

    def delivered(self, frames: np.ndarray, roundtrip: Roundtrip | None) -> list[np.ndarray]:
        """The versions of the output a face-swap tool may get: as saved, and re-compressed."""
        saved = roundtrip(frames) if roundtrip else frames
        versions = [saved]
        if self.config.verify_recompress_quality:
            versions.append(jpeg_roundtrip_uint8(saved, self.config.verify_recompress_quality))
        return versions

    def verify(self, frames: np.ndarray, roundtrip: Roundtrip | None) -> dict[str, list[int]]:
        """Faces still found on any delivered version of ``frames`` (per detector, per frame)."""
        return self._faces_in(self.delivered(frames, roundtrip))

    def _faces_in(self, versions: list[np.ndarray]) -> dict[str, list[int]]:
        return self.judge(versions).by_detector()

    @torch.no_grad()
    def propose_windows(self, x: Tensor) -> list[Window]:
        """Windows around anything a look scores near its threshold."""
        windows: list[Window] = []
        height, width = x.shape[-2:]
        for look in self.looks(height, width):
            detector = self.table[look.detector]
            prediction = detector.dense(_resize_for(look, x))
            for index in range(len(x)):
                scores = prediction.scores[index].float()
                keep = scores > look.threshold * self.config.region_threshold
                boxes = prediction.boxes[index][keep].float()
                boxes = boxes[nms(boxes, scores[keep], 0.3)].cpu().numpy() / look.scale
                windows += face_windows(
                    boxes,
                    index,
                    height,
                    width,
                    self.config.region_margin,
                    self.config.region_margin_min,
                )
        return merge_windows(windows)

    def hold(
        self,
        frames: np.ndarray,
        carried: Tensor,
        windows: list[Window] | None,
        roundtrip: Roundtrip | None,
        sample: Sequence[int],
        targets: Sequence[str] | None = None,
    ) -> AttackResult | None:
        """``carried`` (a perturbation brought along from earlier frames) applied as it is,
        when no target finds a face on the delivery of the ``sample`` frames; ``None`` when
        one does and the frames need refining. Judged at the looks' thresholds, not with the
        early stop's margin: the harsher lone-frame codec of the check already leaves room,
        and with the margin every frame of ``lp_d11`` failed (LivePortrait's look at 0.1 must
        score below 0.08) and spent its whole refinement budget.

        No detector pass: a clip's frames between two samples cost one check per sample
        instead of a warm-started attack each. The unsampled frames' faces after delivery are
        not known here (``None``); the check of the written file counts them."""
        x = frames_to_tensor(frames, self.device)
        windows = self._whole(x) if windows is None else windows
        mask, bound = self._placed(x, windows, self._budget(frames, x))
        delta = self._initial_delta(x, carried, None, bound) * mask
        out = _finish_frames(x, frames, delta, bound)
        names = [d.name for d in self.detectors if targets is None or d.name in targets]
        found = self.verify(out[list(sample)], roundtrip)
        if any(sum(found[name]) for name in names):
            return None
        before = self.judge([frames])
        tools_before = before.by_tool()
        return AttackResult(
            frames=out,
            delta=delta,
            faces_before=before.by_detector(),
            faces_after={name: [None] * len(frames) for name in self.table},
            tools_before=tools_before,
            tools_after={tool: [None] * len(frames) for tool in tools_before},
            precision=self.autocast.name,
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
    ) -> AttackResult:
        """Protect N×H×W×3 uint8 RGB frames. See the module docstring.

        ``targets`` names the detectors to attack and to verify against (default: all). A
        video gives up on a detector for the rest of a scene once a full attack on the scene's
        first frame could not hide the face from it; faces are still counted for every one.
        ``start_failed``: the caller saw ``init_delta`` fail its delivery check already
        (:meth:`hold`), so it is not checked again before the first iteration. ``shared``: the
        frames are attacked with one perturbation, their mean (frames of one scene, where the
        face barely moves): it then holds on the frames between them too.
        """
        config = self.config
        active = [d for d in self.detectors if targets is None or d.name in targets]
        started = time.perf_counter()
        seed = config.seed if config.seed is not None else random.randrange(2**31)
        rng = random.Random(seed)
        generator = torch.Generator().manual_seed(seed)
        x = frames_to_tensor(frames, self.device)
        timings: dict[str, float] = {}

        tick = time.perf_counter()
        looks = self.looks(*frames.shape[1:3])
        before = self.judge([frames])
        faces_before = before.by_detector()
        if windows is None:
            windows = self.propose_windows(x) if config.region_mode else self._whole(x)
        timings["detect"] = time.perf_counter() - tick
        if not windows:  # nothing any detector could see: nothing to hide
            return AttackResult(frames.copy(), torch.zeros_like(x), faces_before, faces_before,
                                before.by_tool(), before.by_tool(), timings=timings,
                                precision=self.autocast.name)  # fmt: skip

        tick = time.perf_counter()
        views = self._views(x, windows)
        importance = self._importance(x, views, generator, active) if config.feature_loss else {}
        timings["importance"] = time.perf_counter() - tick
        budget = iterations or config.iterations
        levels = self._budget(frames, x)
        mask, bound = self._placed(x, windows, levels)
        delta = self._initial_delta(x, init_delta, generator, bound) * mask
        if shared:  # one start for all: their mean, inside each frame's bound
            delta = self._initial_delta(x, delta.mean(0, keepdim=True), None, bound) * mask
        run = _Run(
            x=x,
            frames=frames,
            detectors=active,
            roundtrip=roundtrip,
            windows=windows,
            views=views,
            mask=mask,
            budget=levels,
            bound=bound,
            delta=delta,
            momentum=torch.zeros_like(delta),
            importance=importance,
            transform=RandomTransform(
                config.eot_jpeg_quality if config.eot else None,
                config.eot_scale if config.eot else None,
                config.eot_probability,
                rng,
            ),
            rng=rng,
            progress=progress,
            total_budget=budget + config.repair_rounds * config.repair_iterations,
            looks=looks,
            shared=shared,
        )

        tick = time.perf_counter()
        rounds = 0
        # a warm start (the previous video frame's perturbation) often hides the face already
        skip_first = (
            init_delta is not None
            and not start_failed
            and not self._visible_after_delivery(run, run.delta)
        )
        while True:
            if rounds or not skip_first:
                run.round_starts.append(run.iterations)
                self._iterate(run, budget)
            out = self._finish(run, run.delta)
            delivered = self.delivered(out, roundtrip)
            after = self.judge(delivered)
            faces_after = after.by_detector()
            if rounds >= 1 and config.give_up_ratio:  # after the main iterations + a repair
                run.detectors = self._without_stalled(run, faces_after)
            hidden = all(sum(faces_after[d.name]) == 0 for d in run.detectors)
            last = hidden or rounds >= config.repair_rounds or not run.detectors
            if last and config.shrink_steps and run.iterations:  # give back what steps inflated
                after = self._shrink(run, after, delivered)
                faces_after = after.by_detector()
                out = self._finish(run, run.delta)
            self._report_faces(progress, faces_before, faces_after)
            if last:
                break
            rounds += 1
            budget = config.repair_iterations
            log.info("faces still found after round %d: %s; repairing", rounds, faces_after)
            self._widen(run, delivered)
        timings["attack"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - started
        return AttackResult(
            frames=out,
            delta=run.delta.detach(),
            faces_before=faces_before,
            faces_after=faces_after,
            tools_before=before.by_tool(),
            tools_after=after.by_tool(),
            iterations=run.iterations,
            passes=run.passes,
            repair_rounds=rounds,
            timings=timings,
            precision=self.autocast.name,
            loss_drop=_loss_drops(run.losses),
        )

    def _iterate(self, run: _Run, budget: int) -> None:
        """Up to ``budget`` sign-gradient steps; stops early once the delivery is clean, or
        once the loss has stopped falling (more of the same steps would be wasted).

        The delivery check (codec round-trip, re-compression, every look) is dear; it runs
        every ``check_every`` iterations, and sooner when this iteration's own passes saw every
        look below ``verify_margin`` of its threshold, which costs nothing."""
        config = self.config
        best, since_best = float("inf"), 0
        for step in range(1, budget + 1):
            run.peaks = {}
            delta = run.delta.detach().requires_grad_(True)
            # shared: every frame sees the mean, so every frame's delta gets the same step
            seen = delta.mean(0, keepdim=True).expand_as(delta) if run.shared else delta
            adversarial = self._through_delivery(run, quantize_uint8(run.x + seen))
            # [accumulated through momentum, used as is]
            surrogates = [adversarial.new_zeros(()), adversarial.new_zeros(())]
            # the file is re-encoded at full size once per draw; each tool resizes that
            encoded: dict[int, Tensor] = {}
            for native, _, looks in self._look_groups(run):
                # native looks attack crops around the faces; a tool's look sees the whole
                # frame after the tool's resize, which is cheap: tools shrink the picture
                views = run.views if native else _whole_frames(run.views, run.x)
                seen_views: list[Tensor] = []
                weights: list[float] = []
                for window in views:
                    if native:
                        seen = self._with_context(window, run.x.shape[-2:], run.rng)
                        view, _ = run.transform(_resize_for(looks[0], _crop(adversarial, seen)))
                    else:  # no random rescale before a tool's exact, unantialiased resize:
                        # which pixels reach its detector depends on the exact size, and the
                        # budget cannot hold at every sampling phase (SCRFD at 640 stayed found)
                        if window.frame not in encoded:
                            frame = _crop(adversarial, window)
                            encoded[window.frame] = run.transform(frame, rescale=False)[0]
                        view = _resize_for(looks[0], encoded[window.frame])
                    seen_views.append(view)
                    # a tool's shrunken view spreads each of its pixels' gradient over about
                    # 1/scale² pixels of the frame: scale it back, or the native views would
                    # outvote every tool in the sign of the sum
                    weights.append(1.0 if native else view.shape[-2] * view.shape[-1] / window.area)
                # every view of the group through each detector as one batch (the feature
                # loss's importance is per view, so with it each view goes alone)
                everyone = list(range(len(views)))
                batches = [[i] for i in everyone] if run.importance else [everyone]
                for members in batches:
                    batch = _pad_batch([seen_views[i] for i in members])
                    leaf = batch.detach().requires_grad_(True)
                    window = views[members[0]] if len(members) == 1 else None
                    gradients = self._ensemble_gradient(leaf, window, run, looks)
                    for slot, gradient in enumerate(gradients):
                        if gradient is None:
                            continue
                        for row, i in enumerate(members):  # chain back to delta, view by view
                            height, width = seen_views[i].shape[-2:]
                            part = gradient[row : row + 1, :, :height, :width]
                            surrogates[slot] = surrogates[slot] + (
                                (seen_views[i] * part).sum() / weights[i]
                            )
            run.iterations += 1
            if run.progress:
                run.progress("attack", run.iterations, run.total_budget)
                self._report_losses(run)
            if not any(s.requires_grad for s in surrogates):
                break  # no detector sees anything to push down any more
            parts = [
                torch.autograd.grad(s, delta, retain_graph=True)[0]
                if s.requires_grad
                else torch.zeros_like(delta)
                for s in surrogates
            ]
            norm = (parts[0] + parts[1]).abs().mean() + _TINY
            run.momentum = config.momentum * run.momentum + parts[0] / norm
            direction = run.momentum + parts[1] / norm
            stepped = run.delta - config.step * direction.sign()
            stepped = torch.maximum(torch.minimum(stepped, run.bound), -run.bound)
            run.delta = ((run.x + stepped).clamp(0, 255) - run.x) * run.mask
            due = step % config.check_every == 0 or self._looks_clear(run)
            if (
                step >= config.min_iterations
                and due
                and not self._visible_after_delivery(run, run.delta)
            ):
                log.debug("hidden after delivery at iteration %d", run.iterations)
                break
            if not config.patience:
                continue
            # this iteration's loss: the detectors that were attacked in it
            loss = sum(t[-1] for t in run.losses.values() if len(t) == run.iterations)
            if loss < (1 - config.plateau_tolerance) * best:
                best, since_best = loss, 0
            else:
                since_best += 1
            if since_best >= config.patience:
                log.debug("loss stalled at %.3g for %d iterations", loss, since_best)
                break

    def _through_delivery(self, run: _Run, adversarial: Tensor) -> Tensor:
        """Now and then, the frames as the real codec delivers them, with a straight-through
        gradient; a photo's delivery is the saved JPEG or its re-compression, drawn at random.
        The differentiable JPEG only approximates a codec: H.264 at the output's CRF
        washed out perturbations that were clear on the raw pixels (a clip's key frame: every
        look clear before the codec, seven of eleven found after)."""
        if run.rng.random() >= self.config.eot_delivery:
            return adversarial
        versions = self.delivered(tensor_to_frames(adversarial), run.roundtrip)
        coded = frames_to_tensor(run.rng.choice(versions), adversarial.device)
        return adversarial + (coded - adversarial).detach()

    def _looks_clear(self, run: _Run) -> bool:
        """The cheap check: did every look's views score below the early stop's margin in
        this iteration's own passes?"""
        margin = self.config.verify_margin
        return bool(run.peaks) and all(
            peak < margin * look.threshold for look, peak in run.peaks.items()
        )

    @staticmethod
    def _report_losses(run: _Run) -> None:
        """Per detector: how much of its score loss this call has removed so far."""
        for name, trace in run.losses.items():
            if trace and trace[0] > 0:
                removed = 1 - trace[-1] / trace[0]
                run.progress(detector_phase("loss", name), round(100 * max(0.0, removed)), 100)

    def _without_stalled(self, run: _Run, faces_after: dict[str, list[int]]) -> list[FaceDetector]:
        """Leave out of further repair rounds a detector that still finds a face and whose loss
        fell by less than ``give_up_ratio`` over the last two rounds: more of the same budget
        will not hide it, and every repair round would be spent on it in vain. (Judged over
        one round alone, the noisy loss of a detector one repair away from hiding can look
        stalled.)"""
        kept = []
        since = run.round_starts[-2] if len(run.round_starts) > 1 else 0
        for detector in run.detectors:
            trace = run.losses.get(detector.name, [])[since:]
            visible = sum(faces_after[detector.name]) > 0
            first, last = _trace_ends(trace)
            stalled = len(trace) > 3 and last > (1 - self.config.give_up_ratio) * first
            if visible and stalled:
                log.info("%s: loss %.3g → %.3g; left out of the repair rounds", detector.name,
                         first, last)  # fmt: skip
            else:
                kept.append(detector)
        return kept

    def _look_groups(self, run: _Run) -> list[tuple[bool, float, list[Look]]]:
        """The looks at the attacked detectors, grouped so that the looks at one scale share
        one transformed view: (native, scale, looks)."""
        attacked = {d.name for d in run.detectors}
        groups: dict[tuple[bool, float], list[Look]] = {}
        for look in run.looks:
            if look.detector in attacked:
                groups.setdefault((look.native, look.scale), []).append(look)
        return [(native, scale, looks) for (native, scale), looks in groups.items()]

    def _ensemble_gradient(
        self, view: Tensor, window: Window | None, run: _Run, looks: list[Look]
    ) -> tuple[Tensor | None, Tensor | None]:
        """Sums of per-look gradients on a batch of views, each normalised so no detector
        dominates: of the detectors whose gradient momentum may accumulate, and of those it
        may not (:attr:`FaceDetector.momentum_safe`). ``window`` is the view's when the batch
        holds one (it keys the feature importance)."""
        totals: list[Tensor | None] = [None, None]
        for look in looks:
            detector = self.table[look.detector]
            # the feature importance was estimated on native crops
            importance = (
                run.importance.get((detector.name, *_key(window)))
                if look.native and window is not None
                else None
            )
            # a look at another threshold moves the floors with it
            floor = self.config.score_floor * look.threshold / detector.score_threshold
            gradients, excess, peak = self._detector_gradients(
                detector, view, importance, True, floor
            )
            if gradients is None:  # the half-precision gradient overflowed: this pass in fp32
                gradients, excess, peak = self._detector_gradients(
                    detector, view, importance, False, floor
                )
            run.peaks[look] = max(peak, run.peaks.get(look, 0.0))
            if excess is not None:
                log.debug("%s %s: score loss %.3g", detector.name, window, excess)
                trace = run.losses.setdefault(detector.name, [])
                if len(trace) < run.iterations + 1:
                    trace.append(0.0)
                trace[-1] += excess
            run.passes += 1
            weight = self.config.detector_weights.get(detector.name, 1.0)
            for grad in gradients:
                grad = weight * grad / (grad.abs().mean() + _TINY)
                slot = 0 if detector.momentum_safe else 1
                totals[slot] = grad if totals[slot] is None else totals[slot] + grad
        return totals[0], totals[1]

    def _detector_gradients(
        self,
        detector: FaceDetector,
        view: Tensor,
        importance: FeatureImportance | None,
        half: bool,
        floor: float,
    ) -> tuple[list[Tensor] | None, float | None, float]:
        """One detector's loss gradients with respect to ``view`` (raw, not normalised), its
        score loss above ``floor`` (a fraction of its threshold) and its highest final score;
        ``None`` gradients when a half-precision one overflowed."""
        config = self.config
        half = half and self.autocast.applies_to(detector)
        scale = self._loss_scales.get(detector.name, self.autocast.loss_scale) if half else 1.0
        with self.autocast.forward(detector, enabled=half):
            if importance is not None:
                maps, features = detector.logit_maps_and_features(view)
            else:
                maps, features = detector.logit_maps(view), {}
        final = maps[-1].detach()
        peak = float(torch.sigmoid(final.float().max())) if final.numel() else 0.0
        terms = []
        excess = None
        if config.score_loss:  # the losses are fp32 whatever the maps' precision
            score = score_suppression_loss(maps, detector.score_floors(floor))
            excess = float(score.detach())
            if excess > 0:
                terms.append(score)
        if importance is not None and features and terms:
            terms.append(importance.loss(features) * config.feature_weight)
        gradients = []
        for term in terms:
            (grad,) = torch.autograd.grad(term * scale, view, retain_graph=term is not terms[-1])
            if half and not bool(torch.isfinite(grad).all()):
                self._loss_scales[detector.name] = max(1.0, scale / 16)
                log.debug("%s: gradient overflowed in %s at loss scale %g; fp32 this pass",
                          detector.name, self.autocast.name, scale)  # fmt: skip
                return None, excess, peak
            gradients.append(grad)
        return gradients, excess, peak

    def _importance(
        self,
        x: Tensor,
        views: list[Window],
        generator: torch.Generator,
        detectors: Sequence[FaceDetector],
    ) -> dict[tuple, FeatureImportance]:
        importance = {}
        for window in views:
            for detector in detectors:
                estimate = FeatureImportance.estimate(
                    detector,
                    _crop(x, window),
                    self.config.feature_masks,
                    self.config.feature_keep_prob,
                    generator,
                )
                if estimate is not None:
                    importance[(detector.name, *_key(window))] = estimate
        return importance

    # -- verification and quality recovery --------------------------------------------------

    @torch.no_grad()
    def _visible(self, x: Tensor, run: _Run, detectors: Sequence[FaceDetector]) -> bool:
        """Does any look at ``detectors`` still score above ``verify_margin`` × its threshold?"""
        names = {d.name for d in detectors}
        for native, _, looks in self._look_groups(run):
            for window in run.views if native else _whole_frames(run.views, x):
                crop = _crop(x, window)
                for look in looks:
                    if look.detector not in names:
                        continue
                    detector = self.table[look.detector]
                    view = _resize_for(look, crop)
                    with self.autocast.forward(detector):  # a check; the verdict is fp32
                        scores = detector.score_maps(view)[-1]
                    highest = float(scores.max()) if scores.numel() else 0.0
                    if highest >= self.config.verify_margin * look.threshold:
                        return True
        return False

    def _visible_after_delivery(
        self, run: _Run, delta: Tensor, detectors: Sequence[FaceDetector] | None = None
    ) -> bool:
        versions = self.delivered(self._finish(run, delta), run.roundtrip)
        return self._visible_in(versions, run, detectors)

    def _visible_in(
        self, versions: list[np.ndarray], run: _Run, detectors: Sequence[FaceDetector] | None = None
    ) -> bool:
        detectors = run.detectors if detectors is None else detectors
        return any(
            self._visible(frames_to_tensor(version, run.x.device), run, detectors)
            for version in versions
        )

    def _shrink(self, run: _Run, verdict: Verdict, delivered: list[np.ndarray]) -> Verdict:
        """Scale the perturbation down as far as delivery keeps what it achieved at full
        strength (``faces`` found on the ``delivered`` versions); returns the faces found at
        the chosen scale.

        Sign steps spend the whole budget; most of it is rarely needed, and a few bisection
        steps on the perturbation's scale buy back image quality. A detector that is clear at
        full strength must stay clear by the early stop's margin (``verify_margin``): shrunk
        to the bare threshold, the perturbation breaks under the next codec, warm start or
        smoothing (video hid RetinaFace on 56 % of frames instead of 96 %). A detector that
        still finds some faces may not find more, but does not hold the image's quality
        hostage. It runs once, when the attack ends: between repair rounds it would throw
        away the progress on the faces a detector still finds.
        """
        faces = verdict.by_detector()
        clear = [
            d
            for d in run.detectors
            if sum(faces[d.name]) == 0 and not self._visible_in(delivered, run, [d])
        ]
        low, high, kept = 0.0, 1.0, verdict
        for _ in range(self.config.shrink_steps):
            middle = (low + high) / 2
            versions = self.delivered(self._finish(run, run.delta * middle), run.roundtrip)
            if clear and self._visible_in(versions, run, clear):  # inside the margin: too far
                low = middle
                continue
            judged = self.judge(versions)
            found = judged.by_detector()
            if all(
                now <= before
                for detector in run.detectors
                for now, before in zip(found[detector.name], faces[detector.name], strict=True)
            ):
                high, kept = middle, judged
            else:
                low = middle
        log.debug("perturbation shrunk to %.2f of its size", high)
        run.delta = run.delta * high
        return kept

    @staticmethod
    def _report_faces(
        progress: Progress | None, before: dict[str, list[int]], after: dict[str, list[int]]
    ) -> None:
        if progress:
            for name, found in after.items():
                progress(detector_phase("faces", name), sum(found), sum(before[name]))

    def _widen(self, run: _Run, delivered: list[np.ndarray]) -> None:
        """Also attack wherever the delivered output still shows a face."""
        for version in delivered:
            found = self.propose_windows(frames_to_tensor(version, run.x.device))
            run.windows = merge_windows(run.windows + found)
        run.mask, run.bound = self._placed(run.x, run.windows, run.budget)
        run.views = self._views(run.x, run.windows)

    def _finish(self, run: _Run, delta: Tensor) -> np.ndarray:
        return _finish_frames(run.x, run.frames, delta, run.bound)

    # -- small helpers ---------------------------------------------------------------------

    def _views(self, x: Tensor, windows: list[Window]) -> list[Window]:
        height, width = x.shape[-2:]
        config = self.config
        return detector_views(windows, height, width, config.view_min_size, config.whole_fraction)

    def _with_context(self, window: Window, size: torch.Size, rng: random.Random) -> Window:
        """``window`` grown by a random amount of surrounding context on each side.

        Detectors judge a face partly by its surroundings; varying the context every iteration
        makes a perturbation found on a view hold when the detector sees the whole frame.
        """
        height, width = size
        grow_x = (window.x2 - window.x1) * self.config.view_context
        grow_y = (window.y2 - window.y1) * self.config.view_context
        return Window(
            window.frame,
            max(0, int(window.x1 - rng.uniform(0.5, 1.0) * grow_x)),
            max(0, int(window.y1 - rng.uniform(0.5, 1.0) * grow_y)),
            min(width, int(window.x2 + rng.uniform(0.5, 1.0) * grow_x)),
            min(height, int(window.y2 + rng.uniform(0.5, 1.0) * grow_y)),
        )

    @staticmethod
    def _whole(x: Tensor) -> list[Window]:
        height, width = x.shape[-2:]
        return [Window(i, 0, 0, width, height) for i in range(len(x))]

    def _placed(self, x: Tensor, windows: list[Window], levels: Tensor) -> tuple[Tensor, Tensor]:
        """Where the perturbation may go (a 0/1 mask) and each pixel's bound there: the
        ``levels`` budget faded out around ``windows`` (see :func:`_soft_mask`)."""
        soft = _soft_mask(x, windows, self.config.edge_fade)
        return (soft > 0).float(), levels * soft

    def _budget(self, frames: np.ndarray, x: Tensor) -> Tensor:
        """Every pixel's L∞ budget: ``epsilon``, raised to ``region_epsilon[name]`` around the
        faces detector ``name`` finds on the clean frames (MTCNN needs about 12 levels on a
        large face, which the rest of the picture need not pay for)."""
        config = self.config
        bound = torch.full((x.shape[0], 1, *x.shape[-2:]), config.epsilon, device=x.device)
        height, width = x.shape[-2:]
        for name, epsilon in config.region_epsilon.items():
            looks = [look for look in self.looks(height, width) if look.detector == name]
            for per_frame in detect_looks(self.table, looks, frames).values():
                for index, found in enumerate(per_frame):
                    margin, least = config.region_margin, config.region_margin_min
                    for w in face_windows(found.boxes, index, height, width, margin, least):
                        region = bound[w.frame, :, w.y1 : w.y2, w.x1 : w.x2]
                        region.clamp_(min=epsilon)
        return bound

    def _initial_delta(
        self,
        x: Tensor,
        init_delta: Tensor | None,
        generator: torch.Generator | None,
        bound: Tensor,
    ) -> Tensor:
        """``init_delta`` kept inside ``bound``, or a random start (``generator`` draws it)."""
        if init_delta is not None:
            delta = init_delta.to(x.device)
            return torch.maximum(torch.minimum(delta, bound), -bound)
        start = self.config.random_start * bound
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * start
        return (x + noise).clamp(0, 255) - x


def _finish_frames(x: Tensor, frames: np.ndarray, delta: Tensor, bound: Tensor) -> np.ndarray:
    """Round to 8 bits; rounding may not push any pixel past its bound, so clip exactly."""
    out = tensor_to_frames(quantize_uint8(x + delta)).astype(np.int16)
    limit = bound.floor().permute(0, 2, 3, 1).cpu().numpy().astype(np.int16)
    clean = frames.astype(np.int16)
    return np.clip(out, clean - limit, clean + limit).astype(np.uint8)


def _loss_drops(losses: dict[str, list[float]]) -> dict[str, float]:
    """Per detector, the share of its score loss removed from the first two iterations to the
    last two."""
    drops = {}
    for name, trace in losses.items():
        first, last = _trace_ends(trace)
        drops[name] = max(0.0, 1 - last / first) if first > 0 else 1.0
    return drops


def _trace_ends(trace: list[float]) -> tuple[float, float]:
    """A loss trace's start and end: the mean of two iterations at either end (one EOT draw
    is noisy); 0 for an empty trace."""
    return float(np.mean(trace[:2] or [0])), float(np.mean(trace[-2:] or [0]))


def _crop(x: Tensor, window: Window) -> Tensor:
    return x[window.frame : window.frame + 1, :, window.y1 : window.y2, window.x1 : window.x2]


def _key(window: Window) -> tuple[int, int, int]:
    return (window.frame, window.x1, window.y1)


def _resize_for(look: Look, x: Tensor) -> Tensor:
    """``x`` as a look sees it: for a tool, resized bilinear without antialiasing to the
    tool's size (:func:`tool_size`), as ``cv2.resize`` does; native looks keep the
    antialiased resize of the attack's own pyramid."""
    if look.native:
        return resize(x, look.scale)
    size = tool_size(*x.shape[-2:], look.scale)
    if size == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def _pad_batch(views: list[Tensor]) -> Tensor:
    """1×3×h×w views of different sizes as one batch, zero-padded at the right and bottom
    (as a letterboxing tool pads); one view goes through unchanged."""
    if len(views) == 1:
        return views[0]
    height = max(v.shape[-2] for v in views)
    width = max(v.shape[-1] for v in views)
    return torch.cat([F.pad(v, (0, width - v.shape[-1], 0, height - v.shape[-2])) for v in views])


def _whole_frames(views: list[Window], x: Tensor) -> list[Window]:
    """One whole-frame window for every frame that has something to attack."""
    height, width = x.shape[-2:]
    return [Window(frame, 0, 0, width, height) for frame in sorted({w.frame for w in views})]


def _soft_mask(x: Tensor, windows: list[Window], fade: float) -> Tensor:
    """N×1×H×W: 1 inside ``windows``, falling linearly to 0 over a band of ``fade`` times each
    window's shorter side (at least 2 pixels) around it.

    The budget is multiplied by it, so the perturbation fades out at the border of its face
    region instead of ending in a hard-edged rectangle (visible in a difference heatmap, and
    to a trained eye in flat backgrounds). The band lies outside the window: a fade inside
    it took budget from the face's context, and YuNet found lp_s0's face again.
    Overlapping windows keep the larger value.
    """
    mask = torch.zeros(x.shape[0], 1, *x.shape[-2:], device=x.device)
    height, width = x.shape[-2:]
    for w in windows:
        band = max(2, round(fade * min(w.x2 - w.x1, w.y2 - w.y1))) if fade > 0 else 0
        y1, y2 = max(0, w.y1 - band), min(height, w.y2 + band)
        x1, x2 = max(0, w.x1 - band), min(width, w.x2 + band)
        fade_y = _ramp(y1, y2, w.y1, w.y2, band, x.device)
        fade_x = _ramp(x1, x2, w.x1, w.x2, band, x.device)
        region = mask[w.frame, 0, y1:y2, x1:x2]
        torch.maximum(region, torch.minimum(fade_y[:, None], fade_x[None, :]), out=region)
    return mask


def _ramp(start: int, stop: int, inner_start: int, inner_stop: int, band: int, device) -> Tensor:
    """Along one axis, over pixels ``[start, stop)``: 1 inside ``[inner_start, inner_stop)``,
    falling linearly to 0 ``band`` pixels outside it."""
    centres = torch.arange(start, stop, device=device, dtype=torch.float32)
    outside = torch.clamp(torch.maximum(inner_start - centres, centres - (inner_stop - 1)), min=0)
    if not band:
        return (outside == 0).float()
    return (1 - outside / (band + 1)).clamp(min=0)
