"""Building blocks shared by the VGG-16 single-shot face detectors (S3FD, DSFD, PyramidBox).

The three reference implementations (yxlijun/S3FD.pytorch, DSFD.pytorch, Pyramidbox.pytorch,
the ones FacePoison attacks) all reuse the ssd.pytorch layout: a VGG-16 trunk held in one flat
``nn.ModuleList`` named ``vgg`` (so checkpoint keys are ``vgg.<index>.weight``), four "extra"
convolutions, learnable-scale L2 normalisation on the shallow maps, and one square prior per
location at strides 4..128. This module holds those pieces once, plus prior generation, box
decoding and the :class:`SSDFaceDetector` base that turns a net's raw head outputs into the
:class:`~deepguard.models.base.FaceDetector` interface.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepguard.models.base import DensePrediction, FaceDetector, LogitMap, read_state_dict

#: RGB means subtracted from 0..255 input. The references subtract (104, 117, 123) from a BGR
#: array and then flip it back to RGB, so the nets see RGB minus (123, 117, 104).
RGB_MEAN = (123.0, 117.0, 104.0)
#: Strides of the six prediction levels (conv3_3, conv4_3, conv5_3, fc7, conv6_2, conv7_2).
STEPS = (4, 8, 16, 32, 64, 128)
#: Channels of the trunk maps at those six levels.
SOURCE_CHANNELS = (256, 512, 512, 1024, 512, 256)
#: Side of the square prior at each level (the "scale-equitable" 4×stride anchors of S3FD).
MIN_SIZES = (16, 32, 64, 128, 256, 512)
#: SSD box-encoding variances (centre, size).
VARIANCES = (0.1, 0.2)

# Index just past the last ReLU of each VGG stage in the flat ``vgg`` list (ssd.pytorch layout).
CONV3_3_END = 16
CONV4_3_END = 23
CONV5_3_END = 30

_VGG_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "P3", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class HeadOutput(NamedTuple):
    """Raw per-prior outputs of one detection head (one "shot")."""

    loc: Tensor  # N×A×4 SSD offsets
    logits: Tensor  # N×A×2 (background, face), max-out already applied
    sizes: tuple[tuple[int, int], ...]  # (h, w) of each level's map, for the priors


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (ParseNet / SSD).

    The shallow VGG maps have much larger activations than the deep ones; normalising them keeps
    the heads of all levels on one footing.
    """

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


def vgg16_layers(pool3_ceil: bool, fc6_dilation: int) -> list[nn.Module]:
    """The 35-module VGG-16 trunk (conv1_1 … fc7 as convolutions), in checkpoint index order.

    ``pool3_ceil``: S3FD and DSFD use ``ceil_mode`` for pool3, PyramidBox does not.
    ``fc6_dilation``: atrous fc6 (6 for S3FD/PyramidBox, 3 for DSFD).
    ReLUs are not in-place so intermediate maps can be tapped for the feature loss.
    """
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "P3":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=pool3_ceil))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(item)
    fc6 = nn.Conv2d(512, 1024, kernel_size=3, padding=fc6_dilation, dilation=fc6_dilation)
    fc7 = nn.Conv2d(1024, 1024, kernel_size=1)
    return [*layers, fc6, nn.ReLU(), fc7, nn.ReLU()]


def ssd_extras() -> list[nn.Conv2d]:
    """conv6_1/6_2 and conv7_1/7_2: two stride-2 levels on top of fc7 (strides 64 and 128)."""
    return [
        nn.Conv2d(1024, 256, kernel_size=1),
        nn.Conv2d(256, 512, kernel_size=3, stride=2, padding=1),
        nn.Conv2d(512, 128, kernel_size=1),
        nn.Conv2d(128, 256, kernel_size=3, stride=2, padding=1),
    ]


def run_layers(layers: Sequence[nn.Module], x: Tensor, start: int, stop: int) -> Tensor:
    """Apply ``layers[start:stop]`` in order."""
    for layer in layers[start:stop]:
        x = layer(x)
    return x


def vgg_stages(vgg: Sequence[nn.Module], x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """conv3_3, conv4_3, conv5_3 (after ReLU) and fc7 (after ReLU)."""
    conv3_3 = run_layers(vgg, x, 0, CONV3_3_END)
    conv4_3 = run_layers(vgg, conv3_3, CONV3_3_END, CONV4_3_END)
    conv5_3 = run_layers(vgg, conv4_3, CONV4_3_END, CONV5_3_END)
    fc7 = run_layers(vgg, conv5_3, CONV5_3_END, len(vgg))
    return conv3_3, conv4_3, conv5_3, fc7


def extra_stages(extras: Sequence[nn.Module], fc7: Tensor) -> tuple[Tensor, Tensor]:
    """conv6_2 and conv7_2, each conv followed by ReLU."""
    x = F.relu(extras[1](F.relu(extras[0](fc7))))
    conv6_2 = x
    conv7_2 = F.relu(extras[3](F.relu(extras[2](x))))
    return conv6_2, conv7_2


def vgg_taps(vgg: Sequence[nn.Module], x: Tensor, taps: dict[str, int]) -> dict[str, Tensor]:
    """Run the trunk only as far as needed and return the output of module ``index`` per name."""
    wanted = {index: name for name, index in taps.items()}
    out: dict[str, Tensor] = {}
    for index, layer in enumerate(vgg[: max(wanted) + 1]):
        x = layer(x)
        if index in wanted:
            out[wanted[index]] = x
    return {name: out[name] for name in taps}


def upsample_product(top: Tensor, lateral: Tensor) -> Tensor:
    """Top-down fusion of DSFD/PyramidBox: bilinear upsampling (PyTorch 0.3 semantics, i.e.
    ``align_corners=True``) of the coarser map times the lateral map."""
    top = F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True)
    return top * lateral


def flatten_level(t: Tensor) -> Tensor:
    """N×C×h×w head output to N×(h·w)×C in (row, column) order, matching the priors."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])


def assemble_head(locs: Sequence[Tensor], logits: Sequence[Tensor]) -> HeadOutput:
    """Per-level N×4×h×w offsets and N×2×h×w (background, face) logits → one :class:`HeadOutput`."""
    return HeadOutput(
        loc=torch.cat([flatten_level(t) for t in locs], dim=1),
        logits=torch.cat([flatten_level(t) for t in logits], dim=1),
        sizes=tuple((int(t.shape[-2]), int(t.shape[-1])) for t in locs),
    )


def maxout_background(logits: Tensor, n_background: int) -> Tensor:
    """S3FD max-out label: ``n_background`` background logits + 1 face logit → (bg, face)."""
    background = logits[:, :n_background].amax(dim=1, keepdim=True)
    return torch.cat((background, logits[:, n_background:]), dim=1)


def prior_boxes(
    sizes: Sequence[tuple[int, int]],
    steps: Sequence[int],
    min_sizes: Sequence[int],
    device: torch.device,
) -> Tensor:
    """A×4 priors (cx, cy, w, h) in input pixels, level by level, row-major within a level.

    The references build them in [0, 1] units from the true feature-map sizes (centres at
    ``(j + 0.5) * step / width``) and scale decoded boxes by the image size; working in pixels
    directly gives the same boxes.
    """
    levels = []
    for (height, width), step, size in zip(sizes, steps, min_sizes, strict=True):
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * step
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * step
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        wh = torch.full_like(cx, float(size))
        levels.append(torch.stack((cx, cy, wh, wh), dim=-1).reshape(-1, 4))
    return torch.cat(levels, dim=0)


def decode_boxes(loc: Tensor, priors: Tensor, variances: Sequence[float] = VARIANCES) -> Tensor:
    """SSD offsets (N×A×4) + priors (A×4, cx cy w h) → N×A×4 xyxy boxes, differentiably."""
    centre = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[..., 2:] * variances[1])
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1)


def load_checkpoint(net: nn.Module, path: str | os.PathLike[str]) -> None:
    """Strictly load a checkpoint, also accepting the references' ``{"weight": ...}`` wrapper."""
    state = read_state_dict(path)
    if isinstance(state.get("weight"), dict):
        state = {key.removeprefix("module."): value for key, value in state["weight"].items()}
    net.load_state_dict(state, strict=True)


class SSDFaceDetector(FaceDetector):
    """FaceDetector around a net whose ``forward`` returns one :class:`HeadOutput` per shot.

    The last shot is the final prediction; ``score_maps`` returns the face scores of every shot.
    No resizing or padding: the references run at the input resolution and derive the priors
    from the actual feature-map sizes, which is what is done here too.
    """

    score_threshold = 0.5
    nms_iou = 0.3
    max_detections = 750
    #: fp32 only (S3FD, DSFD, PyramidBox): L2Norm sums the squares of 256-512 channels of
    #: VGG activations on unnormalised 0..255 input, which can pass fp16's 65 504 where an
    #: autocast backend does not upcast the reduction; and without shipped weights their
    #: half-precision behaviour was never measured
    autocast_safe = False
    #: prior side per level of the final shot
    final_min_sizes: tuple[int, ...] = MIN_SIZES
    #: named VGG module indices returned by :meth:`features` (module output, after the ReLU)
    feature_taps: ClassVar[dict[str, int]] = {}

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.feature_modules = {name: f"net.vgg.{i}" for name, i in self.feature_taps.items()}
        self._priors: dict[tuple[int, int, str], Tensor] = {}

    def preprocess(self, x: Tensor) -> Tensor:
        """RGB 0..255 → RGB minus the per-channel mean, as the references feed their nets."""
        return x - x.new_tensor(RGB_MEAN).view(1, 3, 1, 1)

    def shots(self, x: Tensor) -> list[HeadOutput]:
        """Raw outputs of every shot for RGB 0..255 input (the net returns a list)."""
        return self.net(self.preprocess(x))

    def priors(self, x: Tensor, head: HeadOutput) -> Tensor:
        """Priors of the final shot for this input size, built once per (H, W, device)."""
        height, width = x.shape[-2:]
        key = (int(height), int(width), str(x.device))
        if key not in self._priors:
            if len(self._priors) >= 64:
                self._priors.clear()
            self._priors[key] = prior_boxes(head.sizes, STEPS, self.final_min_sizes, x.device)
        return self._priors[key]

    def dense(self, x: Tensor) -> DensePrediction:
        head = self.shots(x)[-1]
        priors = self.priors(x, head).to(head.loc.dtype)
        face_logits = _face_logit(head.logits)
        return DensePrediction(
            scores=face_logits.sigmoid(), boxes=decode_boxes(head.loc, priors), logits=face_logits
        )

    def face_maps(self, x: Tensor) -> list[LogitMap]:
        """Every shot's face log-odds; the final shot's with its boxes (the earlier shots'
        priors are not built here, so their entries are all pushed down)."""
        heads = self.shots(x)
        maps = [LogitMap(_face_logit(head.logits)) for head in heads[:-1]]
        final = heads[-1]
        boxes = decode_boxes(final.loc, self.priors(x, final).to(final.loc.dtype))
        return [*maps, LogitMap(_face_logit(final.logits), boxes.detach())]

    def score_maps(self, x: Tensor) -> list[Tensor]:
        return [logits.sigmoid() for logits in self.logit_maps(x)]

    def features(self, x: Tensor) -> dict[str, Tensor]:
        return vgg_taps(self.net.vgg, self.preprocess(x), self.feature_taps)


def _face_logit(two_class: Tensor) -> Tensor:
    """Face log-odds from (background, face) logits: ``softmax(...)[1] == sigmoid(this)``."""
    return two_class[..., 1] - two_class[..., 0]
