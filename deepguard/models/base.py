"""The one interface every face detector in the zoo implements.

The attack core only ever talks to :class:`FaceDetector`: it needs differentiable face
confidences (``score_maps``), named intermediate features (``features``) and, for
verification, plain detections (``detect``). Inputs are always ``N×3×H×W`` float tensors
holding RGB values in ``0..255``; each detector does its own (differentiable) preprocessing,
so one perturbed tensor can be fed to every member of an ensemble.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import nms


@dataclass(frozen=True)
class Detections:
    """Faces found in one image: ``boxes`` K×4 (x1, y1, x2, y2 in input pixels), ``scores`` K."""

    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))


@dataclass
class LogitMap:
    """One map of face log-odds the attack pushes down (N×A), with the box each entry stands
    for (N×A×4 xyxy in input pixels, detached) where the detector knows it.

    The boxes let the attack push down only the entries on the faces it protects: a stray
    detection on a shirt or a poster is not a face anyone would swap. ``None``: the entries
    have no box (they are all pushed down)."""

    logits: Tensor
    boxes: Tensor | None = None


@dataclass
class DensePrediction:
    """Per-anchor output of a detector's final stage, before thresholding and NMS.

    ``scores`` is N×A face probabilities and ``boxes`` N×A×4 decoded boxes in input pixel
    coordinates. Both stay attached to the autograd graph, so the attack and the detector's
    own post-processing read the very same numbers. ``logits``, where the detector has them,
    are the log-odds behind ``scores``: a probability that rounds to 1.0 in float32 has no
    gradient left, its log-odds still do.
    """

    scores: Tensor
    boxes: Tensor
    logits: Tensor | None = None


class FaceDetector(nn.Module, ABC):
    """Base class for the detector zoo.

    Subclasses set ``name``, ``score_threshold`` and ``nms_iou`` to the detector's published
    defaults and ``feature_modules``, and implement :meth:`dense`.
    """

    name: str = "detector"
    score_threshold: float = 0.5
    nms_iou: float = 0.4
    max_detections: int = 750
    #: boxes narrower than this (in input pixels) are dropped, as the reference code does
    min_box_size: float = 0.0
    #: whether the attack may fold this detector's gradient into its momentum. Not for
    #: cascades whose scored candidates are re-selected every step (MTCNN): there the
    #: accumulated gradient points at candidates that are gone and the attack stalls.
    momentum_safe: bool = True
    #: whether the attack may run this detector's passes under fp16/bf16 autocast on a GPU
    #: (verification never does). Measured per detector against fp32; see ``bench/gpu.py``.
    autocast_safe: bool = True
    #: whether a CPU pass is faster with the weights in channels_last (NHWC) memory format.
    #: Measured per detector with ``bench/passes.py``; only where it won in every run.
    channels_last_on_cpu: bool = False

    @abstractmethod
    def dense(self, x: Tensor) -> DensePrediction:
        """Final-stage face probabilities and boxes for every anchor/location."""

    def score_maps(self, x: Tensor) -> list[Tensor]:
        """Every face confidence that an attack has to push down, each N×A in 0..1.

        Single-stage detectors return their final scores; cascades (MTCNN) add the scores of
        every stage, so that no stage is left to rescue the face.
        """
        return [self.dense(x).scores]

    def face_maps(self, x: Tensor) -> list[LogitMap]:
        """The log-odds of every map in :meth:`score_maps`, with their boxes: what the attack
        differentiates."""
        prediction = self.dense(x)
        logits = prediction.logits
        if logits is None:
            logits = probability_to_logit(prediction.scores)
        return [LogitMap(logits, prediction.boxes.detach())]

    def logit_maps(self, x: Tensor) -> list[Tensor]:
        """The log-odds of :meth:`face_maps` alone."""
        return [m.logits for m in self.face_maps(x)]

    def score_floors(self, fraction: float) -> list[float]:
        """Per entry of :meth:`score_maps`, the confidence below which it no longer matters.

        Final scores must drop well below the threshold (``fraction`` of it) to survive
        re-encoding; a cascade's early stages only need to fall below their own gates.
        A single value applies to every map.
        """
        return [fraction * self.score_threshold]

    #: the three hooked layers of the FacePoison feature loss, shallow to deep:
    #: readable name → dotted path of the submodule whose output is the feature map
    feature_modules: dict[str, str] = {}

    def dropout_points(self) -> list[nn.Module]:
        """The submodules whose outputs the surrogate augmentation drops values of
        (:mod:`deepguard.attack.surrogates`): the hooked feature layers by default."""
        return [self.get_submodule(path) for path in self.feature_modules.values()]

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Three named intermediate feature maps, shallow to deep, for the FacePoison loss."""
        return self.logit_maps_and_features(x)[1]

    def logit_maps_and_features(self, x: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        """:meth:`face_maps_and_features` without the boxes."""
        maps, features = self.face_maps_and_features(x)
        return [m.logits for m in maps], features

    def face_maps_and_features(self, x: Tensor) -> tuple[list[LogitMap], dict[str, Tensor]]:
        """Face maps and hooked features from ONE forward pass, both on the autograd graph.

        The feature-importance estimate needs d(scores)/d(features), so the features must be
        the very tensors the scores were computed from. A layer run several times (a pyramid)
        reports its first call (the finest level).
        """
        captured: dict[str, Tensor] = {}

        def keep(name: str):
            def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
                captured.setdefault(name, output)

            return hook

        handles = [
            self.get_submodule(path).register_forward_hook(keep(name))
            for name, path in self.feature_modules.items()
        ]
        try:
            maps = self.face_maps(x)
        finally:
            for handle in handles:
                handle.remove()
        return maps, {name: captured[name] for name in self.feature_modules if name in captured}

    def postprocess(
        self, pred: DensePrediction, threshold: float | None = None
    ) -> list[Detections]:
        """Threshold, NMS and top-k, image by image. ``threshold`` replaces the detector's
        own, as a tool that runs this detector at another confidence would."""
        threshold = self.score_threshold if threshold is None else threshold
        results = []
        for scores, boxes in zip(
            pred.scores.detach().float(), pred.boxes.detach().float(), strict=False
        ):
            keep = scores > threshold
            if self.min_box_size > 0:
                wh = boxes[:, 2:] - boxes[:, :2]
                keep &= (wh >= self.min_box_size).all(dim=1)
            scores, boxes = scores[keep], boxes[keep]
            keep = nms(boxes, scores, self.nms_iou)[: self.max_detections]
            results.append(
                Detections(boxes[keep].cpu().numpy().astype(np.float32), scores[keep].cpu().numpy())
            )
        return results

    @torch.no_grad()
    def detect_batch(self, x: Tensor, threshold: float | None = None) -> list[Detections]:
        """Detections for an N×3×H×W batch (RGB, 0..255), at ``threshold`` if given."""
        return self.postprocess(self.dense(x), threshold)

    def detect(self, image: np.ndarray, threshold: float | None = None) -> Detections:
        """Detections for one H×W×3 uint8 RGB image, with no gradient."""
        return self.detect_batch(image_to_tensor(image, self.device), threshold)[0]

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """H×W×3 uint8 RGB array to a 1×3×H×W float tensor in 0..255."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {image.shape}")
    tensor = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(device)
    return tensor.permute(2, 0, 1).unsqueeze(0).float()


def rgb_to_bgr(x: Tensor) -> Tensor:
    """Swap the channel order of an N×3×H×W tensor (many detectors were trained on BGR)."""
    return x.flip(1)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad bottom/right so H and W are multiples of ``multiple`` (boxes stay valid)."""
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return nn.functional.pad(x, (0, pad_w, 0, pad_h))


def cell_grid(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """The (column, row) of every cell of a stride's output map, row-major, as (H·W)×2:
    where the anchor-free heads (YuNet, SCRFD) place their predictions."""
    rows = torch.arange(height // stride, device=device, dtype=torch.float32)
    cols = torch.arange(width // stride, device=device, dtype=torch.float32)
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([c.reshape(-1), r.reshape(-1)], dim=1)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a checkpoint safely (``weights_only``) and strip a DataParallel ``module.`` prefix."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {key.removeprefix("module."): value for key, value in state.items()}


def probability_to_logit(p: Tensor, eps: float = 1e-7) -> Tensor:
    """Log-odds of a probability (clamped; exact detectors provide their own logits)."""
    p = p.float().clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def log_odds_of_product(*log_probs: Tensor) -> Tensor:
    """Log-odds of a product of probabilities given as log-probabilities, computed stably.

    For detectors whose score is ``obj × cls`` (or a power of it): log p = Σ log pᵢ, and
    log(1 - p) = log(-expm1(log p)) keeps precision when p is close to 1.
    """
    log_p = sum(log_probs)
    return log_p - torch.log(-torch.expm1(log_p).clamp(max=-1e-30))
