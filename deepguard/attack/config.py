"""Attack parameters and the presets that bundle them.

Presets live in ``configs/presets/<name>.yaml``; every field can be overridden from the CLI or
the API. Budgets (``epsilon``, ``step``) are in 8-bit pixel levels: ``epsilon: 8`` is 8/255.
"""

from __future__ import annotations

from collections.abc import Collection
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deepguard.attack.budget import Rung, ladder
from deepguard.attack.delivery import CHAINS
from deepguard.errors import DeepguardError


class VideoConfig(BaseModel):
    """How a clip is protected beyond the per-frame attack: tracking, warm starts, smoothing
    and the output encoder. Lives in the preset so one file describes a whole run."""

    model_config = ConfigDict(extra="forbid")

    track_detector: str = Field("yunet", description="fast detector that feeds the tracker")
    chunk_size: int = Field(16, ge=1, le=256, description="frames per unit of work")
    warm_start: bool = Field(
        True,
        description="start each frame from the previous one's perturbation (off: every "
        "frame is attacked from scratch, the per-frame baseline)",
    )
    warm_shrink_steps: int = Field(
        0, ge=0, description="bisection steps shrinking a warm-started frame's perturbation"
    )
    refine_step: float = Field(
        1.0,
        gt=0,
        description="step on warm-started frames that need refining, in pixel levels: "
        "smaller steps flicker less, but 0.25 could not repair a frame in its budget "
        "(lp_d11: SCRFD still found on 8 of 10 frames)",
    )
    segment_frames: int = Field(
        12,
        ge=1,
        description="frames after a key frame go in segments of up to this many: the carried "
        "perturbation is kept when the segment's last frame passes its check, else one "
        "perturbation is learnt for the segment",
    )
    segment_iterations: int = Field(
        12, ge=1, description="iterations learning a segment's shared perturbation"
    )
    segment_margin: float = Field(
        0.5,
        gt=0,
        le=1,
        description="a segment's shared perturbation is done when every look scores below "
        "this fraction of its threshold on the sampled frames",
    )
    sample_every: int = Field(
        4,
        ge=1,
        description="a segment's perturbation is learnt on every this-many-th frame and the "
        "last, attacked together",
    )
    refine_iterations: int = Field(
        4, ge=1, description="iterations on a warm-started frame that is not yet hidden"
    )
    repair_rounds: int = Field(
        1, ge=0, description="repair rounds on a warm-started frame (key frames use the attack's)"
    )
    eot_delivery: float = Field(
        0.5,
        ge=0,
        le=1,
        description="the attack's eot_delivery on a clip: the frames through the real H.264 "
        "round-trip on this share of iterations (a key frame of lp_d11: 4 of 11 looks found "
        "after the codec without it, none with it)",
    )
    give_up_below: float = Field(
        0.5,
        ge=0,
        le=1,
        description="a scene stops attacking a detector its key frame hid no face from and "
        "whose score loss the key frame's attack removed less than this share of",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="frames attacked together, at most; default 4 on CPU (where only a "
        "segment's sampled frames, which share one perturbation, go together), 8 on GPU, "
        "where it also shrinks to what free GPU memory holds",
    )
    smoothing: float = Field(
        0.5, ge=0, lt=1, description="weight of the previous frame's perturbation (0: off)"
    )
    verify_recompress: bool = Field(
        False, description="also verify each frame on its JPEG q75 re-compression (slower)"
    )
    crf: int = Field(17, ge=0, le=51, description="libx264 constant rate factor")
    verify_crf_margin: int = Field(
        0,
        ge=0,
        le=20,
        description="the attack's check encodes each frame alone at CRF + this (inside the "
        "clip most frames are P or B frames, quantised more coarsely than a lone I frame); "
        "0 since the attack sees the real codec (eot_delivery): with refine_step 1, 0 left "
        "SCRFD on none of 10 lp_d11 frames of the written file at 113 passes a frame (4 "
        "with the key frame's shrink off: on 1, at 163)",
    )
    x264_preset: str = Field("medium", description="libx264 speed/size preset")
    final_repairs: int = Field(
        2,
        ge=0,
        description="rounds of repairing the frames the check of the written file still finds "
        "a face on: those frames are attacked again and the clip is encoded again (0: the "
        "check only reports them, and no perturbation is kept on disk)",
    )
    repair_crf_margin: int = Field(
        4,
        ge=0,
        le=20,
        description="a repaired frame is judged encoded after the two frames written before "
        "it, at CRF + this: it had passed its lone-frame check at the output's CRF and "
        "still showed the face inside the clip",
    )


class AttackConfig(BaseModel):
    """Everything that decides what the FacePoison attack does."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "custom"
    detectors: list[str] = Field(min_length=1)
    detector_weights: dict[str, float] = Field(
        default_factory=dict, description="relative weight per detector (default 1 each)"
    )
    own_weights: dict[str, str] = Field(
        default_factory=dict,
        description="stand-in → the tools' own detector (configs/tool_weights.yaml) attacked "
        "in its place when that file is here (white-box against what the tools run)",
    )
    own_weights_join: list[str] = Field(
        default_factory=list,
        description="the tools' own detectors attacked besides the ensemble when their file is "
        "here",
    )
    own_weights_join_gpu: list[str] = Field(
        default_factory=list,
        description="the same, on a GPU only (the larger nets cost seconds a pass on a CPU)",
    )
    epsilon: float = Field(
        12.0,
        gt=0,
        le=64,
        description="the cap: no pixel's L∞ budget goes above it, in pixel levels (of 255); "
        "each face climbs a ladder up to it (epsilon_start, epsilon_rung)",
    )
    epsilon_start: float = Field(
        6.0,
        gt=0,
        description="every face starts at min(this, epsilon) and climbs one rung after each "
        "round in which a covered tool still finds it",
    )
    epsilon_rung: float = Field(2.0, gt=0, description="the ladder's step, in pixel levels")
    step: float = Field(2.0, gt=0, description="sign-gradient step in pixel levels")
    iterations: int = Field(10, ge=1, le=1000)
    min_iterations: int = Field(2, ge=1, description="iterations before early stopping may end")
    momentum: float = Field(0.0, ge=0, le=1, description="MI-FGSM momentum; 0 is plain I-FGSM")
    random_start: float = Field(0.0, ge=0, le=1, description="uniform start, fraction of ε")
    # losses
    score_loss: bool = True
    score_floor: float = Field(
        0.3, gt=0, lt=1, description="push confidences below this fraction of the threshold"
    )
    feature_loss: bool = False
    feature_weight: float = Field(
        1.0,
        ge=0,
        description="the feature loss's gradient next to the score loss's, each normalised "
        "to a mean size of 1 first",
    )
    feature_masks: int = Field(8, ge=1, description="dropout masks for feature importance")
    feature_keep_prob: float = Field(0.9, gt=0, le=1)
    feature_looks: Literal["native", "all"] = Field(
        "native",
        description="where the feature loss runs: the native looks' face crops, or also "
        "every tool's look at the whole resized picture (a photo's; one importance per "
        "detector and look, estimated on the clean picture)",
    )
    # transfer to detectors outside the ensemble (docs/results.md: leave-one-out)
    ensemble_weighting: Literal["equal", "loss"] = Field(
        "equal",
        description="how the looks' normalised gradients are summed: equally, or each in "
        "proportion to its share of this iteration's score loss (most say to the look least "
        "fooled; EBAD, CVPR 2023)",
    )
    feature_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of each detector's backbone outputs dropped at every attack pass, "
        "redrawn each step: a nearby detector each time (ghost networks); 0: off",
    )
    input_diversity: float = Field(
        0.0,
        ge=0,
        le=1,
        description="chance per iteration that the delivered copy is also downscaled (0.3-1), "
        "squashed to a square, rotated (±7°), noised (σ 4-6) or JPEG-compressed before the "
        "looks see it, as detectors outside the ensemble do; 0: off",
    )
    # robustness (expectation over transformations)
    eot: bool = True
    eot_probability: float = Field(0.5, ge=0, le=1)
    eot_jpeg_quality: tuple[int, int] = (70, 95)
    eot_scale: tuple[float, float] = (0.8, 1.0)
    eot_delivery: float = Field(
        0.0,
        ge=0,
        le=1,
        description="chance per iteration that the detectors see the frames after the real "
        "delivery codec (the caller's round-trip: H.264 for a clip, the saved JPEG for a "
        "photo), with a straight-through gradient",
    )
    tools: list[str] | None = Field(
        None,
        description="tool profiles (configs/tools.yaml) the result is judged and attacked "
        "under; None: every enabled profile",
    )
    extra_tools: list[str] = Field(
        default_factory=list,
        description="profiles that are off by default which this preset judges under too",
    )
    deliver: list[str] = Field(
        default_factory=lambda: ["saved", "sns"],
        min_length=1,
        description="the delivery chains a result must hold on (saved, q75, sns, sns2048; "
        "see deepguard/attack/delivery.py); the attack optimises through each of them",
    )
    # the perturbation's parameterisation and the randomised resizes it is optimised through
    delta_sizes: list[int] = Field(
        default_factory=lambda: [640, 1080],
        min_length=1,
        description="long sides at which the perturbation's components are held, each "
        "upsampled smoothly to the picture (0: native size); sizes at or above the picture's "
        "own are native",
    )
    tool_scale_jitter: float = Field(
        0.05, ge=0, lt=1, description="a tool's resize is drawn within ± this share of its scale"
    )
    tool_pad: int = Field(
        8, ge=0, description="a tool's view is padded at the top left by up to this many pixels"
    )
    tool_filter_mix: float = Field(
        0.25,
        ge=0,
        le=1,
        description="share of a tool's resizes drawn with another filter than "
        "its own plain bilinear (area, bicubic, antialiased bicubic)",
    )
    loss_power: float = Field(
        3.0,
        ge=1,
        description="each face entry's excess log-odds over the floor is raised to this power "
        "before summing: the entries that score highest get most of the push",
    )
    platform_size_jitter: float = Field(
        0.1, ge=0, lt=1, description="a platform's long side is drawn within ± this share"
    )
    platform_quality_jitter: int = Field(
        8, ge=0, le=50, description="a platform's JPEG quality is drawn within ± this"
    )
    sample_looks: bool = Field(
        True,
        description="one pass per detector and iteration, on one of its looks drawn in turn "
        "(those that still see a face more often); off: every look every iteration",
    )
    skip_below: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="a look whose faces scored below this fraction of its threshold in its "
        "last pass rests until a check sees it find a face again (0: every look works every "
        "iteration)",
    )
    face_loss: bool = Field(
        True,
        description="push down only the detector entries on the protected faces (off: every "
        "entry in the view, stray detections included)",
    )
    face_iou: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="an entry is on a face when its box overlaps one of the face's clean boxes "
        "this much (looser than the verdict's 0.3, so that a shifted box is pushed down too)",
    )
    texture_budget: float = Field(
        0.0,
        ge=0,
        le=1,
        description="lower the budget on flat skin and sky by their local contrast, down to "
        "0.4 of the face's rung; it never raises it (0: off). A face on the ladder's last rung "
        "has the floor lifted",
    )
    # where to attack
    scales: list[float] = Field(
        default_factory=list,
        description="native looks: every ensemble detector also judged and attacked on the "
        "picture scaled by each of these, at its own threshold (the tools' looks come from "
        "the tool profiles)",
    )
    region_mode: bool = True
    region_margin: float = Field(0.3, ge=0, description="margin around faces, in face sizes")
    region_margin_min: float = Field(32, ge=0, description="margin around faces, at least, px")
    view_min_size: int = Field(320, ge=32, description="smallest side of a detector view")
    whole_fraction: float = Field(
        0.5, gt=0, le=1, description="attack the whole frame once views cover this much of it"
    )
    view_context: float = Field(
        0.25, ge=0, description="random extra context around each view, in view sizes"
    )
    # early stop, quality recovery, verify and repair on the encoded output
    check_every: int = Field(
        4, ge=1, description="iterations between delivery checks (sooner if the free check passes)"
    )
    patience: int = Field(
        0,
        ge=0,
        description="end a round once the summed score loss has not reached a new low for this "
        "many iterations (0: never; 4 cost protection on the clip frames, see README)",
    )
    plateau_tolerance: float = Field(
        0.02, ge=0, lt=1, description="a new low must beat the best so far by this fraction"
    )
    edge_fade: float = Field(
        0.1,
        ge=0,
        le=0.5,
        description="the budget fades to 0 over a band this fraction of each face window's "
        "side wide around it (0: hard edges)",
    )
    verify_margin: float = Field(
        0.8, gt=0, le=1, description="hidden means every score below this fraction of threshold"
    )
    shrink_steps: int = Field(3, ge=0, description="bisection steps shrinking the perturbation")
    repair_rounds: int = Field(
        3,
        ge=0,
        description="rounds after the first, at most: after each round the faces a covered tool "
        "still finds climb one rung of the ε ladder (it takes len(rungs) - 1 rounds to reach the "
        "top)",
    )
    give_up_ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="off by default (it cost protection): a detector still finding a face "
        "whose loss fell by less than this fraction over the last two rounds is left out of "
        "the later repair rounds",
    )
    repair_iterations: int = Field(
        5,
        ge=1,
        description="iterations of each round after the first, at most as many as the "
        "first's (a run asked for 1 iteration stays quick)",
    )
    output_jpeg_quality: int = Field(92, ge=50, le=100)
    seed: int | None = 0
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="autocast dtype of the attack's detector passes (auto: fp16 on CUDA, "
        "fp32 on CPU, or DEEPGUARD_PRECISION); losses, the perturbation and verification "
        "stay fp32",
    )
    video: VideoConfig = Field(default_factory=VideoConfig)

    @model_validator(mode="after")
    def _check(self) -> AttackConfig:
        if self.step > self.epsilon:
            raise ValueError(f"step {self.step} is larger than epsilon {self.epsilon}")
        return self

    @model_validator(mode="after")
    def _check_chains(self) -> AttackConfig:
        unknown = [name for name in self.deliver if name not in CHAINS]
        if unknown:
            raise ValueError(
                f"unknown delivery chain(s) {', '.join(unknown)}; choose from {', '.join(CHAINS)}"
            )
        return self

    @property
    def max_epsilon(self) -> float:
        """The largest budget any pixel may get: the cap."""
        return self.epsilon

    @property
    def rungs(self) -> tuple[Rung, ...]:
        """The ε ladder every face climbs (see :mod:`deepguard.attack.budget`)."""
        return ladder(self.epsilon, self.epsilon_start, self.epsilon_rung)

    def for_video(self) -> AttackConfig:
        """The per-frame attack settings for a clip: its delivery is the H.264 file, which
        the caller's round-trip models, so the photo-sharing JPEG check is optional. Video
        gives up on detectors per scene (see the poison stage), not per frame: a key frame
        that gave up on a detector too early would leave it unattacked for the whole scene
        (measured: RetinaFace fell from 96 % to 68 % hidden)."""
        deliver = ["saved", "q75"] if self.video.verify_recompress else ["saved"]
        changes: dict[str, Any] = {
            "give_up_ratio": None,
            "eot_delivery": self.video.eot_delivery,
            "deliver": deliver,
        }
        return self.model_copy(update=changes)

    def for_warm_frames(self) -> AttackConfig:
        """Settings for a frame warm-started from its predecessor: a short repair budget, by
        default no shrinking, which would only make the next frame grow it back (and
        flicker), and a delivery check from the first iteration on: a carried start is often
        one or two steps from hiding (lp_d11, 10 frames: 75.9 passes per frame instead of
        85.8 with the key frame's three)."""
        return self.model_copy(
            update={
                "repair_rounds": self.video.repair_rounds,
                "shrink_steps": self.video.warm_shrink_steps,
                "min_iterations": 1,
                "step": min(self.step, self.video.refine_step),
            }
        )

    def for_segments(self) -> AttackConfig:
        """Settings for the perturbation a segment of a clip shares (see the poison stage):
        a warm frame's, with ``video.segment_iterations`` and an early stop only once every
        look on the sampled frames scores below ``video.segment_margin`` of its threshold.
        The room lets it hold on the frames between them: on the first 30 frames of
        lp_d11, stopping at the usual 0.8 with 4 iterations left 25 of 29 frames to be
        refined after it (81 passes per frame); 0.5 with 12, 19 (50.6 per frame)."""
        warm = self.for_warm_frames()
        return warm.model_copy(update={"verify_margin": self.video.segment_margin})

    def with_default_precision(self, precision: str) -> AttackConfig:
        """This config with the operator's precision (``DEEPGUARD_PRECISION``) in place of
        ``auto``: a preset or an API call that names a precision keeps its own."""
        if self.precision != "auto" or precision == "auto":
            return self
        return self.model_copy(update={"precision": precision})

    def with_overrides(self, **overrides: Any) -> AttackConfig:
        """A copy with the given non-None fields replaced, validated again. Detectors chosen
        by hand are attacked as chosen: no own file takes a chosen stand-in's place."""
        changes = {key: value for key, value in overrides.items() if value is not None}
        if "detectors" in changes:
            for name in ("own_weights", "own_weights_join", "own_weights_join_gpu"):
                changes.setdefault(name, type(getattr(self, name))())
        return parse_config({**self.model_dump(), **changes})

    def with_tool_weights(self, present: Collection[str], gpu: bool = False) -> AttackConfig:
        """The ensemble with the tools' own detectors whose files are here (``present``): in
        place of their stand-ins (``own_weights``), and besides them (``own_weights_join``,
        and ``own_weights_join_gpu`` on a GPU). Applying it twice changes nothing."""
        detectors = [
            self.own_weights[name] if self.own_weights.get(name) in present else name
            for name in self.detectors
        ]
        joining = [*self.own_weights_join, *(self.own_weights_join_gpu if gpu else [])]
        detectors += [name for name in joining if name in present]
        detectors = list(dict.fromkeys(detectors))
        if detectors == self.detectors:
            return self
        swapped = {k: v for k, v in self.own_weights.items() if v in present}
        weights = {swapped.get(name, name): w for name, w in self.detector_weights.items()}
        return self.model_copy(update={"detectors": detectors, "detector_weights": weights})


def with_assignments(config: AttackConfig, assignments: list[str]) -> AttackConfig:
    """``config`` with ``field=value`` / ``video.field=value`` overrides, values read as YAML
    (benchmarks compare variants of a preset this way)."""
    data = config.model_dump()
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        target = data
        *parents, leaf = name.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = yaml.safe_load(value)
    return parse_config(data)


def parse_config(data: dict[str, Any]) -> AttackConfig:
    try:
        return AttackConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors()
        )
        raise DeepguardError(f"invalid attack settings: {problems}") from None


def preset_names() -> list[str]:
    folder = resources.files("deepguard.configs").joinpath("presets")
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_preset(name: str, **overrides: Any) -> AttackConfig:
    """The named preset from ``configs/presets``, with CLI/API overrides applied."""
    if name not in preset_names():
        raise DeepguardError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    text = resources.files("deepguard.configs").joinpath("presets", f"{name}.yaml").read_text()
    config = parse_config({"preset": name, **yaml.safe_load(text)})
    return config.with_overrides(**overrides)
