"""Face-Detector-1MB "slim" and "RFB" networks, as biubug6/Face-Detector-1MB-with-landmark
trained them (a re-implementation of Linzaer's Ultra-Light-Fast-Generic-Face-Detector-1MB with
a landmark head added).

The module tree (and every parameter name) follows those checkpoints: a 13-block
MobileNetV1-style trunk (``conv1`` … ``conv13``) plus an extra stride-2 block (``conv14``);
detection sources at strides 8, 16, 32 and 64 (outputs of ``conv8``, ``conv11``, ``conv13``,
``conv14``) each get a separable ``loc``/``conf``/``landm`` head. The two variants differ only
in ``conv8``: a plain depthwise-separable block (slim) or a Receptive Field Block (RFB).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepguard.models.retinaface.net import conv_bn, conv_dw

Variant = Literal["slim", "rfb"]

#: priors per cell at the four detection sources (sizes 10/16/24, 32/48, 64/96, 128/192/256)
ANCHORS_PER_CELL = (3, 2, 2, 3)
#: channels of the four detection sources
SOURCE_CHANNELS = (64, 128, 256, 256)


def separable_conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3×3 (with bias) → ReLU → pointwise 1×1 (with bias), no BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )


class BasicConv(nn.Module):
    """Conv (no bias) → BatchNorm → optional ReLU, the RFB building block."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        dilation: int = 1,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.01)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class BasicRFB(nn.Module):
    """Receptive Field Block (Liu et al., 2018): three branches with growing dilation.

    Each branch squeezes the channels by ``map_reduce``, widens them with 3×3 convs and ends
    in a dilated 3×3 (dilation 2, 3 and 5); the concatenation is projected back and added to
    a 1×1 shortcut. Stride 1 only, which is all the checkpoint uses.
    """

    def __init__(
        self, in_channels: int, out_channels: int, scale: float = 1.0, map_reduce: int = 8
    ) -> None:
        super().__init__()
        self.scale = scale
        inter = in_channels // map_reduce
        self.branch0 = nn.Sequential(
            BasicConv(in_channels, inter, 1, relu=False),
            BasicConv(inter, 2 * inter, 3, padding=1),
            BasicConv(2 * inter, 2 * inter, 3, padding=2, dilation=2, relu=False),
        )
        self.branch1 = nn.Sequential(
            BasicConv(in_channels, inter, 1, relu=False),
            BasicConv(inter, 2 * inter, 3, padding=1),
            BasicConv(2 * inter, 2 * inter, 3, padding=3, dilation=3, relu=False),
        )
        self.branch2 = nn.Sequential(
            BasicConv(in_channels, inter, 1, relu=False),
            BasicConv(inter, inter // 2 * 3, 3, padding=1),
            BasicConv(inter // 2 * 3, 2 * inter, 3, padding=1),
            BasicConv(2 * inter, 2 * inter, 3, padding=5, dilation=5, relu=False),
        )
        self.ConvLinear = BasicConv(6 * inter, out_channels, 1, relu=False)
        self.shortcut = BasicConv(in_channels, out_channels, 1, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        branches = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)
        return F.relu(self.ConvLinear(branches) * self.scale + self.shortcut(x))


def _multibox(values: int) -> nn.Sequential:
    """One head per detection source; the last (stride 64) is a plain 3×3 conv."""
    layers: list[nn.Module] = [
        separable_conv(channels, anchors * values)
        for channels, anchors in zip(SOURCE_CHANNELS[:-1], ANCHORS_PER_CELL[:-1], strict=True)
    ]
    layers.append(
        nn.Conv2d(SOURCE_CHANNELS[-1], ANCHORS_PER_CELL[-1] * values, kernel_size=3, padding=1)
    )
    return nn.Sequential(*layers)


class UltraSlimNet(nn.Module):
    """The slim / RFB network. ``forward`` returns raw ``(loc, logits, landmarks)``.

    Outputs are N×A×4 box offsets, N×A×2 (background, face) logits and N×A×10 landmark
    offsets, with priors ordered source by source, row by row, cell by cell, anchor by anchor.
    """

    def __init__(self, variant: Variant = "slim") -> None:
        super().__init__()
        if variant not in ("slim", "rfb"):
            raise ValueError(f"unknown Face-Detector-1MB variant {variant!r} (slim or rfb)")
        self.variant = variant
        self.conv1 = conv_bn(3, 16, 2)
        self.conv2 = conv_dw(16, 32, 1)
        self.conv3 = conv_dw(32, 32, 2)
        self.conv4 = conv_dw(32, 32, 1)
        self.conv5 = conv_dw(32, 64, 2)
        self.conv6 = conv_dw(64, 64, 1)
        self.conv7 = conv_dw(64, 64, 1)
        self.conv8 = conv_dw(64, 64, 1) if variant == "slim" else BasicRFB(64, 64, scale=1.0)
        self.conv9 = conv_dw(64, 128, 2)
        self.conv10 = conv_dw(128, 128, 1)
        self.conv11 = conv_dw(128, 128, 1)
        self.conv12 = conv_dw(128, 256, 2)
        self.conv13 = conv_dw(256, 256, 1)
        self.conv14 = nn.Sequential(
            nn.Conv2d(256, 64, kernel_size=1),
            nn.ReLU(),
            separable_conv(64, 256, stride=2),
            nn.ReLU(),
        )
        self.loc = _multibox(4)
        self.conf = _multibox(2)
        self.landm = _multibox(10)

    def backbone(self, x: Tensor) -> list[Tensor]:
        """The four detection sources, at strides 8, 16, 32 and 64."""
        for block in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5, self.conv6):
            x = block(x)
        s8 = self.conv8(self.conv7(x))
        s16 = self.conv11(self.conv10(self.conv9(s8)))
        s32 = self.conv13(self.conv12(s16))
        s64 = self.conv14(s32)
        return [s8, s16, s32, s64]

    @staticmethod
    def _run_heads(heads: nn.Sequential, sources: list[Tensor], values: int) -> Tensor:
        outputs = []
        for head, source in zip(heads, sources, strict=True):
            out = head(source).permute(0, 2, 3, 1)
            outputs.append(out.reshape(out.shape[0], -1, values))
        return torch.cat(outputs, dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sources = self.backbone(x)
        return (
            self._run_heads(self.loc, sources, 4),
            self._run_heads(self.conf, sources, 2),
            self._run_heads(self.landm, sources, 10),
        )
