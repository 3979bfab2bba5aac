"""The optimiser loop: sign-gradient steps on the perturbation against every look at once.

Each iteration draws one delivery chain (in turn), runs a differentiable, randomised version
of it on the perturbed frames (:class:`~deepguard.attack.delivery.ChainModel`), and shows the
copy to every look the way its tool would, through a randomised resize
(:class:`~deepguard.attack.delivery.ToolResize`). Each look's loss pushes down only the
entries on the protected faces; its gradient is normalised (no detector outvotes the others)
and all of them flow back through the chain into the perturbation's components in one
backward pass. The real check (:meth:`FacePoison.check`) runs every ``check_every``
iterations, and sooner when this iteration's own passes saw every look below the early
stop's margin.

Passes are counted by kind in :attr:`Run.passes`: ``attack`` (a forward and a backward),
``retry`` (the same pass again in fp32 after a half-precision overflow), ``importance``
(forward and backward, the feature loss's dropout masks), and the forward-only ``faces``,
``check`` and ``shrink`` (:data:`BACKWARD_KINDS` says which carry a backward).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from deepguard.attack.config import AttackConfig
from deepguard.attack.delivery import Chain, ChainModel, ToolResize, ViewGeometry
from deepguard.attack.diversity import BoxMap, InputDiversity
from deepguard.attack.losses import FeatureImportance, face_score_loss
from deepguard.attack.perturbation import Perturbation
from deepguard.attack.precision import Autocast
from deepguard.attack.regions import Window
from deepguard.attack.surrogates import ghost
from deepguard.attack.transforms import quantize_uint8, resize
from deepguard.attack.verification import Faces, Look
from deepguard.models.base import FaceDetector
from deepguard.progress import Progress, detector_phase

log = logging.getLogger(__name__)

_TINY = 1e-12
#: the kinds of detector pass that run a backward as well as a forward
BACKWARD_KINDS = ("attack", "retry", "importance")


@dataclass
class Plan:
    """What one chain delivers and how the attacked looks see it: the delivered copy's
    nominal (height, width) and the looks planned for that size."""

    chain: Chain
    size: tuple[int, int]
    looks: list[Look]


@dataclass
class Run:
    """The state of one attack call, shared by the loop and the checks."""

    x: Tensor  # N×3×H×W float, the clean frames
    frames: np.ndarray  # the clean frames as uint8
    faces: Faces  # what is protected, per frame
    detectors: list[FaceDetector]  # the ones attacked in this call
    plans: list[Plan]
    perturbation: Perturbation
    views: list[Window]  # the native looks' crops, around the faces
    importance: dict[tuple, FeatureImportance]
    model: ChainModel
    resize: ToolResize
    rng: random.Random
    progress: Progress | None
    total_budget: int
    #: the caller's real codec (the saved file), for the check
    roundtrip: Callable[[np.ndarray], np.ndarray] | None = None
    #: the same codec on tensors, straight through, on a share of iterations (video)
    through_codec: Callable[[Tensor], Tensor] | None = None
    iterations: int = 0
    passes: Counter = field(default_factory=Counter)  # by kind: attack, check, ...
    # detector → its score loss summed over views, per iteration (to spot a stalled one)
    losses: dict[str, list[float]] = field(default_factory=dict)
    # (chain, look) → the highest face score its last pass saw: the cheap check
    peaks: dict[tuple[str, Look], float] = field(default_factory=dict)
    # (chain, look) → the iteration its peak was measured at (a peak older than the last
    # real check says nothing about the perturbation now)
    peaks_at: dict[tuple[str, Look], int] = field(default_factory=dict)
    # (chain, look) that the last real check saw find a protected face (by the margin)
    failing: set[tuple[str, Look]] = field(default_factory=set)
    # the iteration of the last real check (-1: none yet), and of the round's start
    checked_at: int = -1
    round_start: int = 0

    def face_boxes(self, frame: int) -> np.ndarray:
        """K×4: every clean box of every protected face of ``frame``."""
        boxes = [face.boxes for face in self.faces[frame]]
        return np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)


class Optimiser:
    """Runs iterations on a :class:`Run` for one ensemble (its detectors and settings)."""

    def __init__(
        self, config: AttackConfig, table: dict[str, FaceDetector], autocast: Autocast
    ) -> None:
        self.config = config
        self.table = table
        self.autocast = autocast
        #: per detector, the fp16 loss scale (lowered when a scaled gradient overflows)
        self._loss_scales: dict[str, float] = {}
        #: draws the surrogate augmentation's dropout masks
        self._ghosts = torch.Generator().manual_seed(config.seed or 0)

    def iterate(self, run: Run, budget: int, clear: Callable[..., bool]) -> None:
        """Up to ``budget`` steps; stops early once ``clear(run)`` (the real check) passes,
        or once the loss has stopped falling (more of the same steps would be wasted)."""
        config = self.config
        best, since_best = float("inf"), 0
        # the first round runs min_iterations before it may stop; a repair round may stop at
        # its first check (otherwise a round of min_iterations gets one check, at its end)
        least = config.min_iterations if run.round_start == 0 else 1
        for step in range(1, budget + 1):
            plan = self._draw_plan(run)
            leaves = run.perturbation.leaves()
            moved, direct = self._gradient(run, plan, leaves)
            run.iterations += 1
            if run.progress:
                run.progress("attack", run.iterations, run.total_budget)
                self._report_losses(run)
            if moved is None and direct is None:
                log.debug("no look sees anything to push down")
            else:
                run.perturbation.step(moved, config.step, direct)
            due = step % config.check_every == 0 or self.looks_clear(run) or step == budget
            # the round's last check is the full one its verdict needs: no partial one first
            if step >= least and due and clear(run, full=step == budget):
                log.debug("hidden after delivery at iteration %d", run.iterations)
                break
            if moved is None and direct is None:
                continue
            if not config.patience:
                continue
            loss = sum(t[-1] for t in run.losses.values() if len(t) == run.iterations)
            if loss < (1 - config.plateau_tolerance) * best:
                best, since_best = loss, 0
            else:
                since_best += 1
            if since_best >= config.patience:
                log.debug("loss stalled at %.3g for %d iterations", loss, since_best)
                break

    def looks_clear(self, run: Run) -> bool:
        """The cheap check: did every attacked look of every chain score below the early
        stop's margin on the faces, in a pass made since the last real check? A look not
        drawn since then (or never) has no say yet, so this does not fire a real check on
        every iteration after one that failed."""
        margin = self.config.verify_margin
        attacked = {d.name for d in run.detectors}
        for plan in run.plans:
            for look in plan.looks:
                if look.detector not in attacked:
                    continue
                key = (plan.chain.name, look)
                if run.peaks_at.get(key, -1) <= run.checked_at:
                    return False
                if run.peaks[key] >= margin * look.threshold:
                    return False
        return True

    def _draw_plan(self, run: Run) -> Plan:
        """The delivery chain of this iteration: in turn while no check has run, then in
        proportion to how many looks the last check saw fail on each (plus one each, so a
        chain that passes keeps being seen)."""
        if run.checked_at < 0 or not run.failing:
            return run.plans[run.iterations % len(run.plans)]
        weights = [
            1 + sum(1 for chain, _ in run.failing if chain == plan.chain.name) for plan in run.plans
        ]
        return run.rng.choices(run.plans, weights)[0]

    # -- one iteration ---------------------------------------------------------------------

    def _gradient(
        self, run: Run, plan: Plan, leaves: list[Tensor]
    ) -> tuple[list[Tensor] | None, list[Tensor] | None]:
        """The gradient of every attacked look's loss on ``plan``'s chain with respect to the
        perturbation's components, in two sums: of the detectors whose gradient the momentum
        may accumulate, and of those it may not (:attr:`FaceDetector.momentum_safe`: MTCNN's
        candidates change every step, and momentum stalled the attack on it). ``None``: no
        look of that kind left anything to push down."""
        delta = run.perturbation.compose(leaves)
        adversarial = self._through_delivery(run, quantize_uint8(run.x + delta))
        delivered = run.model(adversarial, plan.chain)
        height, width = run.x.shape[-2:]
        # what a detector outside the ensemble may do to the copy (off by default)
        delivered, box_map, _ = InputDiversity(self.config.input_diversity, run.rng)(delivered)
        # the delivered copy against the original frame, and against the chain's nominal size
        ratio_x, ratio_y = delivered.shape[-1] / width, delivered.shape[-2] / height
        drift = max(plan.size) / max(delivered.shape[-2:])
        looks = self._draw_looks(run, plan)
        said: list[tuple[bool, list[Tensor], float]] = []  # per look: kind, gradients, loss
        for position, look in enumerate(looks):
            surrogate = delivered.new_zeros(())
            excess = 0.0
            views = self._views(run, look, delivered, drift, (ratio_x, ratio_y), box_map)
            for group in views:
                batch = _pad_batch([row.view for row in group])
                faces = [torch.from_numpy(row.faces) for row in group]
                leaf = batch.detach().requires_grad_(True)
                gradient, loss = self._look_gradient(run, plan.chain, look, leaf, faces, group)
                excess += loss
                if gradient is None:
                    continue
                for index, row in enumerate(group):
                    rows, cols = row.view.shape[-2:]
                    part = gradient[index : index + 1, :, :rows, :cols]
                    surrogate = surrogate + (row.view * part).sum()
            if not surrogate.requires_grad:
                continue
            # each look's say in every component is the same: its gradient there, normalised
            last = position == len(looks) - 1
            parts = torch.autograd.grad(surrogate, leaves, retain_graph=not last)
            weight = self.config.detector_weights.get(look.detector, 1.0)
            normalised = [weight * g / (g.abs().mean() + _TINY) for g in parts]
            said.append((self.table[look.detector].momentum_safe, normalised, excess))
        return _summed(said, self.config.ensemble_weighting)

    def _through_delivery(self, run: Run, adversarial: Tensor) -> Tensor:
        """On a share ``eot_delivery`` of iterations, the frames as the real codec delivers
        them, with a straight-through gradient (a clip's H.264: the differentiable JPEG only
        approximates it, and H.264 at the output's CRF washed out perturbations that were
        clear on the raw pixels: 7 of 11 looks found a key frame's face after the codec)."""
        if run.through_codec is None or run.rng.random() >= self.config.eot_delivery:
            return adversarial
        coded = run.through_codec(adversarial)
        return adversarial + (coded - adversarial).detach()

    def _draw_looks(self, run: Run, plan: Plan) -> list[Look]:
        """One look per attacked detector for this iteration (``sample_looks``): a
        detector's looks at its tools' sizes take turns, the ones that still see a face most
        often (drawn in proportion to their last peak score over their threshold). Each pass
        then serves every tool that runs the detector, and the random resize around each
        tool's size covers the sizes in between.

        A look whose last pass scored the faces below ``skip_below`` of its threshold, and
        that the last check did not see find a face, rests until a check sees it find one
        (a detector all of whose looks rest makes no pass)."""
        attacked = {d.name for d in run.detectors}
        skip = self.config.skip_below
        by_detector: dict[str, list[Look]] = {}
        for look in plan.looks:
            key = (plan.chain.name, look)
            resting = (
                skip > 0
                and key not in run.failing
                and run.peaks.get(key, 1.0) < skip * look.threshold
            )
            if look.detector in attacked and not resting:
                by_detector.setdefault(look.detector, []).append(look)
        if not self.config.sample_looks:
            return [look for looks in by_detector.values() for look in looks]
        drawn = []
        for looks in by_detector.values():
            weights = [
                min(2.0, run.peaks.get((plan.chain.name, look), look.threshold) / look.threshold)
                + 0.2
                for look in looks
            ]
            drawn.append(run.rng.choices(looks, weights)[0])
        return drawn

    def _views(
        self,
        run: Run,
        look: Look,
        delivered: Tensor,
        drift: float,
        ratios: tuple[float, float],
        box_map: BoxMap | None = None,
    ) -> list[list[_View]]:
        """What ``look`` sees of the delivered copy, in batches: a tool's look sees every
        frame whole after its (randomised) resize; a native look crops around the faces, with
        random context (each crop alone when the feature loss needs its own importance).
        ``box_map``: where the input diversity moved the boxes (a rotation)."""
        height, width = run.x.shape[-2:]
        frames = sorted({w.frame for w in run.views})
        scale = np.array([*ratios, *ratios], np.float32)
        moved = box_map or (lambda boxes: boxes)
        if not look.crops:
            batch, geometry = run.resize(delivered[frames], look.scale * drift)
            return [[
                _View(batch[i : i + 1], geometry.boxes_to_view(moved(run.face_boxes(f) * scale)),
                      float(height * width), None, f)
                for i, f in enumerate(frames)
            ]]  # fmt: skip
        config = self.config
        rows = []
        for window in run.views:
            grown = _with_context(window, (height, width), config.view_context, run.rng)
            x1, y1 = round(grown.x1 * ratios[0]), round(grown.y1 * ratios[1])
            x2 = max(x1 + 1, round(grown.x2 * ratios[0]))
            y2 = max(y1 + 1, round(grown.y2 * ratios[1]))
            crop = delivered[grown.frame : grown.frame + 1, :, y1:y2, x1:x2]
            factor = look.scale
            if config.eot and config.eot_scale and run.rng.random() < config.eot_probability:
                factor *= run.rng.uniform(*config.eot_scale)
            view = resize(crop, factor) if factor != 1.0 else crop
            geometry = ViewGeometry(
                view.shape[-1] / crop.shape[-1], view.shape[-2] / crop.shape[-2], x1, y1
            )
            faces = geometry.boxes_to_view(moved(run.face_boxes(grown.frame) * scale))
            rows.append(_View(view, faces, float(grown.area), window, grown.frame, grown))
        if run.importance:
            return [[row] for row in rows]
        return [rows]

    def _look_gradient(
        self,
        run: Run,
        chain: Chain,
        look: Look,
        view: Tensor,
        faces: list[Tensor],
        group: list[_View],
    ) -> tuple[Tensor | None, float]:
        """The normalised gradient of ``look``'s face loss with respect to ``view`` (a batch
        of ``group``'s views; ``None`` when its faces already score below the floor
        everywhere) and that loss. With the feature loss, each term's gradient is normalised
        on its own and the feature term then weighs ``feature_weight`` against the score's."""
        detector = self.table[look.detector]
        importance, region = _importance_of(run, detector.name, look, group)
        # a look at another threshold moves the floors with it
        floor = self.config.score_floor * look.threshold / detector.score_threshold
        gradients, excess, peak = self._detector_gradients(
            detector, view, faces, importance, True, floor, region
        )
        if gradients is None:  # the half-precision gradient overflowed: this pass in fp32
            run.passes["retry"] += view.shape[0]
            gradients, excess, peak = self._detector_gradients(
                detector, view, faces, importance, False, floor, region
            )
        run.passes["attack"] += view.shape[0]
        run.peaks[(chain.name, look)] = peak
        run.peaks_at[(chain.name, look)] = run.iterations + 1  # this iteration's number
        trace = run.losses.setdefault(detector.name, [])
        if len(trace) < run.iterations + 1:
            trace.append(0.0)
        trace[-1] += excess
        if not gradients:
            return None, excess
        total = None
        for position, grad in enumerate(gradients):
            grad = grad / (grad.abs().mean() + _TINY)
            if position:  # the feature term
                grad = grad * self.config.feature_weight
            total = grad if total is None else total + grad
        return total, excess

    def _detector_gradients(
        self,
        detector: FaceDetector,
        view: Tensor,
        faces: list[Tensor],
        importance: FeatureImportance | None,
        half: bool,
        floor: float,
        region: tuple[float, float, float, float] | None = None,
    ) -> tuple[list[Tensor] | None, float, float]:
        """One detector's loss gradients with respect to ``view`` (raw, not normalised), its
        face loss above ``floor`` (a fraction of its threshold) and its highest face score;
        ``None`` gradients when a half-precision one overflowed. ``region``: the part of the
        importance's picture that ``view`` shows (a crop with less context)."""
        config = self.config
        half = half and self.autocast.applies_to(detector)
        scale = self._loss_scales.get(detector.name, self.autocast.loss_scale) if half else 1.0
        dropout = ghost(detector, config.feature_dropout, self._ghosts)
        with self.autocast.forward(detector, enabled=half), dropout:
            if importance is not None:
                maps, features = detector.face_maps_and_features(view)
            else:
                maps, features = detector.face_maps(view), {}
        faces_or_all = faces if config.face_loss else None
        score, peak = face_score_loss(
            maps, detector.score_floors(floor), faces_or_all, config.face_iou, config.loss_power
        )
        excess = float(score.detach())
        terms = [score] if excess > 0 else []
        if importance is not None and features and terms:
            terms.append(importance.loss(features, region))
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

    @staticmethod
    def _report_losses(run: Run) -> None:
        """Per detector: how much of its score loss this call has removed so far."""
        assert run.progress is not None
        for name, trace in run.losses.items():
            if trace and trace[0] > 0:
                removed = 1 - trace[-1] / trace[0]
                run.progress(detector_phase("loss", name), round(100 * max(0.0, removed)), 100)


@dataclass
class _View:
    """One view a look is shown: the tensor, the protected faces' boxes in its pixels, the
    area of the frame it covers, and its window (native crops)."""

    view: Tensor
    faces: np.ndarray
    area: float
    window: Window | None
    frame: int = 0
    #: the crop's window with its random context (native crops)
    grown: Window | None = None


def importance_for(
    config: AttackConfig,
    x: Tensor,
    views: Sequence[Window],
    generator: torch.Generator,
    detectors: Sequence[FaceDetector],
    passes: Counter | None = None,
    tool_looks: Sequence[Look] = (),
) -> dict[tuple, FeatureImportance]:
    """The FacePoison feature importance of every detector on every native view, and on
    every one of ``tool_looks`` (the whole clean frame at the look's scale); each estimate's
    passes, a forward and a backward per dropout mask, counted in ``passes["importance"]``.

    A native view is estimated with all the context a crop of it may get (``view_context``),
    so that a crop with less is a part of the estimate's picture, not a stretched copy."""
    importance = {}
    height, width = x.shape[-2:]
    by_name = {detector.name: detector for detector in detectors}
    jobs: list[tuple[tuple, FaceDetector, Tensor, Window | None]] = []
    for window in views:
        full = _with_context(window, (height, width), config.view_context, None)
        crop = x[full.frame : full.frame + 1, :, full.y1 : full.y2, full.x1 : full.x2]
        for detector in detectors:
            key = (detector.name, "crop", window.frame, window.x1, window.y1)
            jobs.append((key, detector, crop, full))
    for look in tool_looks:
        if look.detector not in by_name:
            continue
        for frame in range(x.shape[0]):
            picture = resize(x[frame : frame + 1], look.scale) if look.scale != 1 else x[frame:]
            key = (look.detector, "look", round(look.scale, 4), frame)
            jobs.append((key, by_name[look.detector], picture[:1], None))
    for key, detector, picture, full in jobs:
        if passes is not None:
            passes["importance"] += config.feature_masks
        estimate = FeatureImportance.estimate(
            detector, picture, config.feature_masks, config.feature_keep_prob, generator
        )
        if estimate is not None:
            estimate.window = full
            importance[key] = estimate
    return importance


def _importance_of(
    run: Run, detector: str, look: Look, group: list[_View]
) -> tuple[FeatureImportance | None, tuple[float, float, float, float] | None]:
    """The importance for a look's views (one crop, or one whole frame), and the part of its
    picture the view shows (fractions x1, y1, x2, y2; ``None``: all of it)."""
    if not run.importance or len(group) != 1:
        return None, None
    (row,) = group
    if look.crops and row.window is not None:
        window = row.window
        estimate = run.importance.get((detector, "crop", window.frame, window.x1, window.y1))
        if estimate is None or estimate.window is None or row.grown is None:
            return estimate, None
        full, grown = estimate.window, row.grown
        span_x, span_y = max(1, full.x2 - full.x1), max(1, full.y2 - full.y1)
        region = ((grown.x1 - full.x1) / span_x, (grown.y1 - full.y1) / span_y,
                  (grown.x2 - full.x1) / span_x, (grown.y2 - full.y1) / span_y)  # fmt: skip
        return estimate, region
    return run.importance.get((detector, "look", round(look.scale, 4), row.frame)), None


def _summed(
    said: list[tuple[bool, list[Tensor], float]], weighting: str
) -> tuple[list[Tensor] | None, list[Tensor] | None]:
    """The looks' normalised gradients summed per kind (momentum-safe, direct): equally, or
    (``"loss"``) each weighted by its share of the iteration's score loss, times the number
    of looks (so the step's scale is that of the equal sum)."""
    if not said:
        return None, None
    weights = [1.0] * len(said)
    if weighting == "loss":
        total = sum(loss for _, _, loss in said)
        if total > 0:
            weights = [len(said) * loss / total for _, _, loss in said]
    sums: dict[bool, list[Tensor]] = {}
    for (kind, parts, _), weight in zip(said, weights, strict=True):
        scaled = [weight * part for part in parts]
        previous = sums.get(kind)
        sums[kind] = (
            scaled if previous is None else [a + b for a, b in zip(previous, scaled, strict=True)]
        )
    return sums.get(True), sums.get(False)


def loss_drops(losses: dict[str, list[float]]) -> dict[str, float]:
    """Per detector, the share of its score loss removed from the first two iterations to the
    last two."""
    drops = {}
    for name, trace in losses.items():
        first, last = trace_ends(trace)
        drops[name] = max(0.0, 1 - last / first) if first > 0 else 1.0
    return drops


def trace_ends(trace: list[float]) -> tuple[float, float]:
    """A loss trace's start and end: the mean of two iterations at either end (one draw is
    noisy); 0 for an empty trace."""
    return float(np.mean(trace[:2] or [0])), float(np.mean(trace[-2:] or [0]))


def _with_context(
    window: Window, size: tuple[int, int], context: float, rng: random.Random | None
) -> Window:
    """``window`` grown by a random amount of surrounding context on each side (``rng``
    ``None``: the most it may get).

    Detectors judge a face partly by its surroundings; varying the context every iteration
    makes a perturbation found on a view hold when the detector sees the whole frame.
    """
    height, width = size
    grow_x = (window.x2 - window.x1) * context
    grow_y = (window.y2 - window.y1) * context

    def share() -> float:
        return 1.0 if rng is None else rng.uniform(0.5, 1.0)

    return Window(
        window.frame,
        max(0, int(window.x1 - share() * grow_x)),
        max(0, int(window.y1 - share() * grow_y)),
        min(width, int(window.x2 + share() * grow_x)),
        min(height, int(window.y2 + share() * grow_y)),
    )


def _pad_batch(views: list[Tensor]) -> Tensor:
    """1×3×h×w views of different sizes as one batch, zero-padded at the right and bottom
    (as a letterboxing tool pads); one view goes through unchanged."""
    if len(views) == 1:
        return views[0]
    height = max(v.shape[-2] for v in views)
    width = max(v.shape[-1] for v in views)
    return torch.cat([F.pad(v, (0, width - v.shape[-1], 0, height - v.shape[-2])) for v in views])
