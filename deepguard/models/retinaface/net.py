"""RetinaFace (Deng et al., 2019) with a MobileNet-0.25 backbone, in the biubug6 layout.

The module tree (and every parameter name) follows the biubug6 checkpoints: a MobileNetV1
×0.25 body whose three stages (strides 8, 16 and 32) feed a top-down FPN, one SSH context
module per level, and per-level 1×1 heads for face/background logits, box offsets and five
landmarks.

The shipped ``retinaface_mobilenet0.25.pth`` is the ``mobilenet0.25_Final.pth`` of
biubug6/Face-Detector-1MB-with-landmark, whose ``models/net.py`` uses plain ReLU everywhere.
biubug6/Pytorch_Retinaface has the same parameter names but LeakyReLU(0.1) activations (and
larger priors); run with those, this checkpoint misplaces every box and fires on a flat grey
image, so the activations here are ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: priors per cell at every level (two sizes each: 10/20, 32/64, 128/256 pixels)
ANCHORS_PER_CELL = (2, 2, 2)


def conv_bn(
    in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3, relu: bool = True
) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → optional ReLU; indices 0/1 match the checkpoint."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
        ),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def conv_dw(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Depthwise 3×3 → BN → ReLU → pointwise 1×1 → BN → ReLU (MobileNetV1 block)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class MobileNetV1Body(nn.Module):
    """MobileNetV1 at width 0.25, cut after its third stage (the classifier is not used)."""

    out_channels = (64, 128, 256)

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(  # stride 8
            conv_bn(3, 8, stride=2),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(  # stride 16
            conv_dw(64, 128, 2),
            *(conv_dw(128, 128, 1) for _ in range(5)),
        )
        self.stage3 = nn.Sequential(  # stride 32
            conv_dw(128, 256, 2),
            conv_dw(256, 256, 1),
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        c3 = self.stage3(c2)
        return [c1, c2, c3]


class FPN(nn.Module):
    """Top-down feature pyramid: lateral 1×1 convs, nearest upsampling and 3×3 merges."""

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int = 64) -> None:
        super().__init__()
        self.output1 = conv_bn(in_channels[0], out_channels, kernel_size=1)
        self.output2 = conv_bn(in_channels[1], out_channels, kernel_size=1)
        self.output3 = conv_bn(in_channels[2], out_channels, kernel_size=1)
        self.merge1 = conv_bn(out_channels, out_channels)
        self.merge2 = conv_bn(out_channels, out_channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        p1 = self.output1(features[0])
        p2 = self.output2(features[1])
        p3 = self.output3(features[2])
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return [p1, p2, p3]


class SSH(nn.Module):
    """Single Stage Headless context module: 3×3, 5×5 and 7×7 receptive fields concatenated.

    The 5×5 and 7×7 paths are stacked 3×3 convs sharing their first layer. The attribute
    names (including the lower-case ``conv7x7_3``) are the checkpoint's.
    """

    def __init__(self, in_channels: int = 64, out_channels: int = 64) -> None:
        super().__init__()
        self.conv3X3 = conv_bn(in_channels, out_channels // 2, relu=False)
        self.conv5X5_1 = conv_bn(in_channels, out_channels // 4)
        self.conv5X5_2 = conv_bn(out_channels // 4, out_channels // 4, relu=False)
        self.conv7X7_2 = conv_bn(out_channels // 4, out_channels // 4)
        self.conv7x7_3 = conv_bn(out_channels // 4, out_channels // 4, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        branch3 = self.conv3X3(x)
        shared = self.conv5X5_1(x)
        branch5 = self.conv5X5_2(shared)
        branch7 = self.conv7x7_3(self.conv7X7_2(shared))
        return F.relu(torch.cat([branch3, branch5, branch7], dim=1))


class AnchorHead(nn.Module):
    """A 1×1 conv predicting ``values`` numbers per anchor, flattened to N×(H·W·anchors)×values."""

    def __init__(self, in_channels: int, anchors: int, values: int) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channels, anchors * values, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


def _heads(in_channels: int, values: int) -> nn.ModuleList:
    return nn.ModuleList(AnchorHead(in_channels, n, values) for n in ANCHORS_PER_CELL)


class RetinaFace(nn.Module):
    """The full network. ``forward`` returns raw ``(loc, logits, landmarks)`` for all priors.

    Outputs are N×A×4 box offsets, N×A×2 (background, face) logits and N×A×10 landmark
    offsets, with priors ordered level by level, row by row, cell by cell, anchor by anchor.
    ``body`` returns the three levels (strides 8, 16, 32) with ``body.out_channels`` channels;
    MobileNet-0.25 by default (the ResNet-50 one is :mod:`deepguard.models.retinaface_r50`).
    """

    def __init__(self, out_channels: int = 64, body: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body if body is not None else MobileNetV1Body()
        self.fpn = FPN(self.body.out_channels, out_channels)
        self.ssh1 = SSH(out_channels, out_channels)
        self.ssh2 = SSH(out_channels, out_channels)
        self.ssh3 = SSH(out_channels, out_channels)
        self.ClassHead = _heads(out_channels, 2)
        self.BboxHead = _heads(out_channels, 4)
        self.LandmarkHead = _heads(out_channels, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pyramid = self.fpn(self.body(x))
        levels = [ssh(p) for ssh, p in zip((self.ssh1, self.ssh2, self.ssh3), pyramid, strict=True)]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, levels, strict=True)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, levels, strict=True)], dim=1)
        landmarks = torch.cat(
            [head(f) for head, f in zip(self.LandmarkHead, levels, strict=True)], dim=1
        )
        return loc, logits, landmarks
