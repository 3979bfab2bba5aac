"""FaceBoxes as a :class:`FaceDetector`: BGR mean subtraction, dense priors, SSD decoding.

Defaults follow zisianw/FaceBoxes.PyTorch ``test.py``: NMS IoU 0.3, ``keep_top_k`` 750 and
``vis_thres`` 0.5 (the score above which its demo draws a face). The network was trained on
``cv2.imread`` (BGR) images minus the per-channel mean (104, 117, 123), with no scaling.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from deepguard.models.base import DensePrediction, FaceDetector, read_state_dict, rgb_to_bgr
from deepguard.models.faceboxes.net import FaceBoxesNet

WEIGHTS_FILE = "faceboxes.pth"

#: per-channel mean of the training images, in BGR order
BGR_MEAN = (104.0, 117.0, 123.0)
#: one entry per detection source: (stride, anchor sizes in pixels)
PRIOR_LEVELS: tuple[tuple[int, tuple[int, ...]], ...] = (
    (32, (32, 64, 128)),
    (64, (256,)),
    (128, (512,)),
)
#: anchor densification: small anchors are tiled n×n times per cell so they are as dense
#: as the large ones (the paper's "anchor densification strategy")
DENSIFY = {32: 4, 64: 2}
VARIANCE = (0.1, 0.2)


def cell_template(sizes: tuple[int, ...]) -> Tensor:
    """Anchors of one cell as (dx, dy, size) rows, dx/dy in cells, in the checkpoint's order."""
    rows = []
    for size in sizes:
        n = DENSIFY.get(size, 1)
        # a densified anchor starts at the cell corner; a single one sits at the centre
        offsets = [k / n for k in range(n)] if n > 1 else [0.5]
        rows += [(dx, dy, float(size)) for dy in offsets for dx in offsets]
    return torch.tensor(rows)


def make_priors(height: int, width: int, device: torch.device) -> Tensor:
    """All priors for an H×W input as A×4 (cx, cy, w, h) in input pixels."""
    levels = []
    for stride, sizes in PRIOR_LEVELS:
        rows, cols = -(-height // stride), -(-width // stride)
        template = cell_template(sizes).to(device)  # T×3
        ys, xs = torch.meshgrid(
            torch.arange(rows, device=device, dtype=torch.float32),
            torch.arange(cols, device=device, dtype=torch.float32),
            indexing="ij",
        )
        cells = torch.stack([xs.flatten(), ys.flatten()], dim=1)  # C×2, row-major
        centres = (cells[:, None, :] + template[None, :, :2]) * stride  # C×T×2
        wh = template[None, :, 2:].expand(len(cells), -1, -1).repeat(1, 1, 2)  # C×T×2
        levels.append(torch.cat([centres, wh], dim=2).reshape(-1, 4))
    return torch.cat(levels)


def decode(loc: Tensor, priors: Tensor) -> Tensor:
    """SSD box decoding: N×A×4 offsets and A×4 (cx, cy, w, h) priors → N×A×4 xyxy."""
    centres = priors[:, :2] + loc[..., :2] * VARIANCE[0] * priors[:, 2:]
    wh = priors[:, 2:] * torch.exp(loc[..., 2:] * VARIANCE[1])
    return torch.cat([centres - wh / 2, centres + wh / 2], dim=-1)


class FaceBoxes(FaceDetector):
    """FaceBoxes (CPU real-time detector); works at any input size without padding."""

    name = "faceboxes"
    feature_modules = {
        "inception3": "net.inception3",
        "conv3_2": "net.conv3_2",
        "conv4_2": "net.conv4_2",
    }
    score_threshold = 0.5
    nms_iou = 0.3
    max_detections = 750

    def __init__(self) -> None:
        super().__init__()
        self.net = FaceBoxesNet()
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self._priors: dict[tuple[int, int, torch.device], Tensor] = {}

    def preprocess(self, x: Tensor) -> Tensor:
        """RGB 0..255 → BGR minus the training mean."""
        return rgb_to_bgr(x) - self.mean

    def priors(self, height: int, width: int, device: torch.device) -> Tensor:
        key = (height, width, device)
        if key not in self._priors:
            self._priors[key] = make_priors(height, width, device)
        return self._priors[key]

    def dense(self, x: Tensor) -> DensePrediction:
        loc, conf = self.net(self.preprocess(x))
        priors = self.priors(x.shape[-2], x.shape[-1], x.device).to(loc.dtype)
        face_logits = conf[..., 1] - conf[..., 0]  # softmax(...)[1] == sigmoid(this)
        scores = face_logits.sigmoid()
        return DensePrediction(scores=scores, boxes=decode(loc, priors), logits=face_logits)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """The three detection sources (strides 32, 64, 128)."""
        return self.net.sources(self.preprocess(x))


def load(weights: Mapping[str, Path] | None, **options: object) -> FaceDetector:
    """Build FaceBoxes; ``weights`` maps ``faceboxes.pth`` to its path (``None``: random init)."""
    if options:
        raise TypeError(f"faceboxes takes no options, got {sorted(options)}")
    model = FaceBoxes()
    if weights is not None:
        model.net.load_state_dict(read_state_dict(weights[WEIGHTS_FILE]), strict=True)
    model.eval()
    model.requires_grad_(False)
    return model
