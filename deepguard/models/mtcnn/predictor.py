"""MTCNN as a :class:`FaceDetector`: a differentiable three-stage cascade.

Defaults follow facenet-pytorch 2.6.0 (``MTCNN()`` and ``detect_face``): ``min_face_size``
20, pyramid ``factor`` 0.709, stage thresholds (0.6, 0.7, 0.7); P-Net NMS 0.5 per scale, then
0.7 across scales; R-Net NMS 0.7; O-Net NMS 0.7 with the "Min" overlap (intersection over the
smaller box). Images are RGB in the ordinary N×3×H×W layout, normalised to (x - 127.5) / 128.

Unlike the reference, which resizes with ``interpolate(mode="area")`` on detached crops, every
path from the input pixels to a score is differentiable: the pyramid is ``F.interpolate`` on
the input tensor, and the R-Net/O-Net crops are cut from it with ``roi_align``. Only the choice
of candidates (thresholds, NMS, box calibration and squaring) is a non-differentiable index
selection. ``roi_align`` averages ``ceil(box / crop)`` bilinear samples per output cell, which
matches the reference's area resampling when shrinking and is bilinear when enlarging.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, roi_align

from deepguard.models.base import (
    DensePrediction,
    Detections,
    FaceDetector,
    LogitMap,
    read_state_dict,
)
from deepguard.models.mtcnn.net import ONet, PNet, RNet

WEIGHT_FILES = {"pnet": "mtcnn_pnet.pt", "rnet": "mtcnn_rnet.pt", "onet": "mtcnn_onet.pt"}

#: P-Net looks at 12×12 windows with a stride of 2 (its single 2×2 pooling)
CELL_SIZE = 12
STRIDE = 2
#: crop sizes of R-Net and O-Net
RNET_SIZE = 24
ONET_SIZE = 48
PNET_NMS_PER_SCALE = 0.5
PNET_NMS_ACROSS_SCALES = 0.7
RNET_NMS = 0.7
#: log-odds given to padding slots: sigmoid(-30) is 0 for every practical purpose
_NO_FACE = -30.0


@dataclass
class Stage:
    """Candidates of one cascade stage, flattened over the batch.

    ``logits`` K face log-odds (attached to the graph), ``boxes`` K×4 in input pixels and
    ``image`` K, the index of the image in the batch each candidate belongs to.
    """

    logits: Tensor
    boxes: Tensor
    image: Tensor

    def select(self, keep: Tensor) -> Stage:
        return Stage(self.logits[keep], self.boxes[keep], self.image[keep])


@dataclass
class Cascade:
    """Everything one pass of MTCNN computes: P-Net maps per pyramid level and both refiners."""

    pnet_maps: list[Tensor]
    rnet: Stage
    onet: Stage


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Image scales at which a ``min_face_size`` face and larger ones fill a 12-pixel window."""
    scale = CELL_SIZE / min_face_size
    shortest = min(height, width) * scale
    scales = []
    while shortest >= CELL_SIZE:
        scales.append(scale)
        scale *= factor
        shortest *= factor
    return scales


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size of one pyramid level, rounded as in the reference (``int(h * scale + 1)``)."""
    return int(height * scale + 1), int(width * scale + 1)


def window_boxes(
    offsets: Tensor, logit: Tensor, scale: float, threshold: float
) -> tuple[Stage, Tensor]:
    """P-Net windows above ``threshold`` at one level (after per-level NMS) and their offsets.

    ``offsets`` N×4×h×w and ``logit`` N×h×w (detached). Windows are mapped back to the input
    with the reference's rounding.
    """
    prob = logit.sigmoid()
    image, row, col = (prob >= threshold).nonzero(as_tuple=True)
    corner = torch.stack([col, row], dim=1).to(prob.dtype) * STRIDE
    top_left = torch.floor((corner + 1) / scale)
    bottom_right = torch.floor((corner + CELL_SIZE) / scale)
    boxes = torch.cat([top_left, bottom_right], dim=1)
    scores = prob[image, row, col]
    keep = batched_nms(boxes, scores, image, PNET_NMS_PER_SCALE)
    deltas = offsets.permute(0, 2, 3, 1)[image, row, col]
    return Stage(logit[image, row, col][keep], boxes[keep], image[keep]), deltas[keep]


def cell_windows(rows: int, cols: int, scale: float, device: torch.device) -> Tensor:
    """1×(rows·cols)×4: the input-pixel window of every P-Net cell at one pyramid level, row
    by row, rounded as :func:`window_boxes` rounds them."""
    row, col = torch.meshgrid(
        torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij"
    )
    corner = torch.stack([col.reshape(-1), row.reshape(-1)], dim=1).float() * STRIDE
    top_left = torch.floor((corner + 1) / scale)
    bottom_right = torch.floor((corner + CELL_SIZE) / scale)
    return torch.cat([top_left, bottom_right], dim=1)[None]


def calibrate_window(boxes: Tensor, offsets: Tensor) -> Tensor:
    """P-Net box regression: offsets are fractions of the window size (no +1)."""
    return boxes + offsets * (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)


def calibrate(boxes: Tensor, offsets: Tensor) -> Tensor:
    """R-/O-Net box regression: offsets are fractions of the inclusive (+1) box size."""
    size = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)
    return boxes + offsets * size


def square(boxes: Tensor) -> Tensor:
    """Grow each box to a square on its longer side, keeping the centre."""
    size = boxes[:, 2:] - boxes[:, :2]
    side = size.max(dim=1, keepdim=True).values
    top_left = boxes[:, :2] + (size - side) / 2
    return torch.cat([top_left, top_left + side], dim=1)


def crop_regions(boxes: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pixel regions the reference crops for each box, and which of them are non-empty.

    The reference truncates box corners to integers, clips them to the image and crops
    pixels ``x-1 .. ex-1`` (1-based ``x``); as a continuous region that is ``[x-1, ex]``.
    Parts of a box outside the image are cut off (and the rest stretched), not zero-padded.
    """
    corners = boxes.trunc()
    x1 = corners[:, 0].clamp(min=1) - 1
    y1 = corners[:, 1].clamp(min=1) - 1
    x2 = corners[:, 2].clamp(max=width)
    y2 = corners[:, 3].clamp(max=height)
    valid = (x2 > x1) & (y2 > y1)
    return torch.stack([x1, y1, x2, y2], dim=1), valid


def _no_index(device: torch.device) -> Tensor:
    return torch.zeros(0, dtype=torch.long, device=device)


def pad_per_image(values: Tensor, image: Tensor, batch_size: int, fill: float = 0.0) -> Tensor:
    """Scatter K per-candidate values into N×A(×...) rows, padded with ``fill``; differentiable."""
    counts = torch.bincount(image, minlength=batch_size)
    width = int(counts.max()) if len(image) else 0
    out = values.new_full((batch_size, width, *values.shape[1:]), fill)
    if len(image) == 0:
        return out
    order = torch.argsort(image, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(image)
    slot[order] = torch.arange(len(image), device=image.device) - starts[image[order]]
    return out.index_put((image, slot), values)


def min_overlap_nms(boxes: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """Greedy NMS on intersection over the smaller box (+1 pixel sizes), MTCNN's "Min" NMS."""
    order = scores.argsort(descending=True, stable=True)
    boxes = boxes[order].double()
    area = (boxes[:, 2:] - boxes[:, :2] + 1).prod(dim=1)
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left + 1).clamp(min=0).prod(dim=2)
    overlap = inter / torch.minimum(area[:, None], area[None, :])
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(boxes)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlap[i] > threshold
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


class MTCNN(FaceDetector):
    """P-Net proposals on an image pyramid, refined by R-Net on 24×24 and O-Net on 48×48 crops."""

    name = "mtcnn"
    feature_modules = {
        "pnet.prelu1": "pnet.prelu1",
        "pnet.prelu2": "pnet.prelu2",
        "pnet.prelu3": "pnet.prelu3",
    }
    score_threshold = 0.7
    nms_iou = 0.7
    max_detections = 750
    #: R-Net/O-Net candidates change every step; momentum on them measurably stalls the attack
    momentum_safe = False
    #: fp32 only: which P-Net/R-Net candidates pass is a hard threshold + NMS decision, and
    #: half precision flips it. Measured against fp32 (CPU fp16 autocast, 3 shared photos):
    #: the score loss moved 1-2 % (0.1 % for the single-stage nets) and scored candidates
    #: changed, with per-candidate probabilities up to 0.99 apart; the others stayed < 0.006.
    autocast_safe = False

    def __init__(
        self,
        min_face_size: float = 20.0,
        factor: float = 0.709,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
    ) -> None:
        super().__init__()
        self.pnet = PNet()
        self.rnet = RNet()
        self.onet = ONet()
        self.min_face_size = float(min_face_size)
        self.factor = float(factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.score_threshold = self.thresholds[2]
        self._scales: dict[tuple[int, int], list[float]] = {}

    def scales(self, height: int, width: int) -> list[float]:
        key = (height, width)
        if key not in self._scales:
            self._scales[key] = pyramid_scales(height, width, self.min_face_size, self.factor)
        return self._scales[key]

    def normalise(self, x: Tensor) -> Tensor:
        """RGB 0..255 → (x - 127.5) / 128, in the nets' dtype."""
        return (x.to(self.pnet.conv1.weight.dtype) - 127.5) / 128.0

    def proposals(self, xn: Tensor) -> tuple[list[Tensor], Stage]:
        """P-Net face log-odds for every pyramid level, and the squared candidates they propose."""
        height, width = xn.shape[-2:]
        maps, found, deltas = [], [], []
        for scale in self.scales(height, width):
            resized = F.interpolate(xn, size=level_size(height, width, scale), mode="area")
            offsets, logit = self.pnet(resized)
            maps.append(logit)
            with torch.no_grad():
                stage, delta = window_boxes(offsets, logit, scale, self.thresholds[0])
            found.append(stage)
            deltas.append(delta)
        if not found:
            return maps, Stage(xn.new_zeros(0), xn.new_zeros(0, 4), _no_index(xn.device))
        logits = torch.cat([s.logits for s in found])
        boxes = torch.cat([s.boxes for s in found])
        image = torch.cat([s.image for s in found])
        keep = batched_nms(boxes, logits.detach(), image, PNET_NMS_ACROSS_SCALES)
        boxes = square(calibrate_window(boxes[keep], torch.cat(deltas)[keep]))
        return maps, Stage(logits[keep], boxes, image[keep])

    def refine(
        self, net: torch.nn.Module, xn: Tensor, candidates: Stage, size: int
    ) -> tuple[Stage, Tensor]:
        """Score ``size``×``size`` crops of the candidates with ``net`` in one batch.

        Returns the candidates whose crop is non-empty, with ``net``'s face log-odds, and
        ``net``'s box offsets.
        """
        regions, valid = crop_regions(candidates.boxes, xn.shape[-2], xn.shape[-1])
        candidates = candidates.select(valid)
        if len(candidates.image) == 0:
            return Stage(xn.new_zeros(0), candidates.boxes, candidates.image), xn.new_zeros(0, 4)
        rois = torch.cat([candidates.image[:, None].to(regions.dtype), regions[valid]], dim=1)
        crops = roi_align(xn, rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        outputs = net(crops)
        return Stage(outputs[-1], candidates.boxes, candidates.image), outputs[0]

    def cascade(self, x: Tensor) -> Cascade:
        """One full MTCNN pass; scores stay attached to ``x``, candidate selection is detached."""
        xn = self.normalise(x)
        maps, proposed = self.proposals(xn)
        rnet, offsets = self.refine(self.rnet, xn, proposed, RNET_SIZE)
        with torch.no_grad():
            passed = rnet.logits.sigmoid() > self.thresholds[1]
            boxes, logits, image = rnet.boxes[passed], rnet.logits[passed], rnet.image[passed]
            keep = batched_nms(boxes, logits, image, RNET_NMS)
            boxes = square(calibrate(boxes[keep], offsets[passed][keep]))
            survivors = Stage(logits[keep], boxes, image[keep])
        onet, offsets = self.refine(self.onet, xn, survivors, ONET_SIZE)
        onet.boxes = calibrate(onet.boxes, offsets)
        return Cascade(maps, rnet, onet)

    def dense(self, x: Tensor) -> DensePrediction:
        """O-Net scores and calibrated boxes of every O-Net candidate (zero-padded per image)."""
        onet = self.cascade(x).onet
        n = x.shape[0]
        logits = pad_per_image(onet.logits, onet.image, n, fill=_NO_FACE)
        return DensePrediction(
            scores=logits.sigmoid(),
            boxes=pad_per_image(onet.boxes, onet.image, n),
            logits=logits,
        )

    def face_maps(self, x: Tensor) -> list[LogitMap]:
        """[P-Net maps of all levels concatenated, R-Net on P-Net candidates, O-Net on R-Net
        survivors], face log-odds, each N×A (R/O-Net rows padded with "no face"), with the
        window each entry scores: a P-Net cell's 12-pixel window, a candidate's box."""
        cascade = self.cascade(x)
        n = x.shape[0]
        height, width = x.shape[-2:]
        scales = self.scales(height, width)
        pnet = [m.flatten(1) for m in cascade.pnet_maps]
        windows = [
            cell_windows(m.shape[-2], m.shape[-1], scale, x.device).expand(n, -1, -1)
            for m, scale in zip(cascade.pnet_maps, scales, strict=True)
        ]
        return [
            LogitMap(
                torch.cat(pnet, dim=1) if pnet else x.new_zeros((n, 0)),
                torch.cat(windows, dim=1) if windows else x.new_zeros((n, 0, 4)),
            ),
            LogitMap(
                pad_per_image(cascade.rnet.logits, cascade.rnet.image, n, fill=_NO_FACE),
                pad_per_image(cascade.rnet.boxes.detach(), cascade.rnet.image, n),
            ),
            LogitMap(
                pad_per_image(cascade.onet.logits, cascade.onet.image, n, fill=_NO_FACE),
                pad_per_image(cascade.onet.boxes.detach(), cascade.onet.image, n),
            ),
        ]

    def score_maps(self, x: Tensor) -> list[Tensor]:
        """The probabilities of :meth:`logit_maps`."""
        return [logits.sigmoid() for logits in self.logit_maps(x)]

    def score_floors(self, fraction: float) -> list[float]:
        """P-Net and R-Net only have to stay below their gates; O-Net decides."""
        return [self.thresholds[0], self.thresholds[1], fraction * self.thresholds[2]]

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """P-Net's three PReLU activations on the first (finest) pyramid level."""
        height, width = x.shape[-2:]
        scale = CELL_SIZE / self.min_face_size
        level = F.interpolate(self.normalise(x), size=level_size(height, width, scale), mode="area")
        c1, c2, c3 = self.pnet.trunk(level)
        return {"pnet.prelu1": c1, "pnet.prelu2": c2, "pnet.prelu3": c3}

    def postprocess(
        self, pred: DensePrediction, threshold: float | None = None
    ) -> list[Detections]:
        """Threshold at the O-Net threshold (or ``threshold``), then the reference's
        "Min"-overlap NMS."""
        threshold = self.score_threshold if threshold is None else threshold
        results = []
        all_scores, all_boxes = pred.scores.detach().float(), pred.boxes.detach().float()
        for scores, boxes in zip(all_scores, all_boxes, strict=True):
            keep = scores > threshold
            scores, boxes = scores[keep], boxes[keep]
            keep = min_overlap_nms(boxes, scores, self.nms_iou)[: self.max_detections]
            results.append(
                Detections(boxes[keep].cpu().numpy().astype(np.float32), scores[keep].cpu().numpy())
            )
        return results


def load(weights: Mapping[str, Path] | None, **options: object) -> FaceDetector:
    """Build MTCNN; ``weights`` maps the three ``mtcnn_*.pt`` files to paths (``None``: random).

    Options: ``min_face_size`` (20), ``factor`` (0.709), ``thresholds`` ((0.6, 0.7, 0.7)).
    """
    unknown = set(options) - {"min_face_size", "factor", "thresholds"}
    if unknown:
        raise TypeError(f"mtcnn got unknown options {sorted(unknown)}")
    model = MTCNN(**options)  # type: ignore[arg-type]
    if weights is not None:
        for attribute, file_name in WEIGHT_FILES.items():
            net = getattr(model, attribute)
            net.load_state_dict(read_state_dict(weights[file_name]), strict=True)
    model.eval()
    model.requires_grad_(False)
    return model
