"""DSFD: Dual Shot Face Detector (Li et al., CVPR 2019), VGG-16 variant.

Layer names follow yxlijun/DSFD.pytorch (``models/DSFD_vgg.py``) so its checkpoint loads with
``strict=True``. The first shot predicts from the plain VGG/extra maps; the second ("enhanced")
shot predicts from the same six levels after a top-down FPN and a Feature Enhance Module.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepguard.models.s3fd.ssd import (
    SOURCE_CHANNELS,
    HeadOutput,
    L2Norm,
    assemble_head,
    extra_stages,
    ssd_extras,
    upsample_product,
    vgg16_layers,
    vgg_stages,
)


def _dilated_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=3, dilation=3)


class FEM(nn.Module):
    """Feature Enhance Module: three dilated branches of depth 1, 2 and 3, concatenated.

    The branches split the channels in thirds (the last takes the remainder) so the output has
    as many channels as the input.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        third = channels // 3
        rest = channels - 2 * third
        self.branch1 = _dilated_conv(channels, third)
        self.branch2 = nn.Sequential(
            _dilated_conv(channels, third), nn.ReLU(), _dilated_conv(third, third)
        )
        self.branch3 = nn.Sequential(
            _dilated_conv(channels, rest),
            nn.ReLU(),
            _dilated_conv(rest, rest),
            nn.ReLU(),
            _dilated_conv(rest, rest),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(torch.cat((self.branch1(x), self.branch2(x), self.branch3(x)), dim=1))


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


def _heads(out_channels: int) -> nn.ModuleList:
    return nn.ModuleList(
        nn.Conv2d(channels, out_channels, kernel_size=3, padding=1) for channels in SOURCE_CHANNELS
    )


class DSFD(nn.Module):
    """VGG-16 DSFD; ``forward`` returns ``[first_shot, second_shot]``."""

    def __init__(self) -> None:
        super().__init__()
        self.vgg = nn.ModuleList(vgg16_layers(pool3_ceil=True, fc6_dilation=3))
        self.L2Normof1 = L2Norm(256, 10)
        self.L2Normof2 = L2Norm(512, 8)
        self.L2Normof3 = L2Norm(512, 5)
        self.extras = nn.ModuleList(ssd_extras())
        # top-down path, deepest first: conv7_2 → conv7_2, then each level onto the next
        # shallower one (conv6_2, fc7, conv5_3, conv4_3, conv3_3)
        deep_first = SOURCE_CHANNELS[::-1]
        self.fpn_topdown = nn.ModuleList(
            [_conv1x1(deep_first[0], deep_first[0])]
            + [_conv1x1(a, b) for a, b in pairwise(deep_first)]
        )
        self.fpn_latlayer = nn.ModuleList(_conv1x1(c, c) for c in deep_first[1:])
        self.fpn_fem = nn.ModuleList(FEM(c) for c in SOURCE_CHANNELS)
        self.L2Normef1 = L2Norm(256, 10)
        self.L2Normef2 = L2Norm(512, 8)
        self.L2Normef3 = L2Norm(512, 5)
        self.loc_pal1 = _heads(4)
        self.conf_pal1 = _heads(2)
        self.loc_pal2 = _heads(4)
        self.conf_pal2 = _heads(2)

    def original_features(self, x: Tensor) -> list[Tensor]:
        """The six un-normalised maps of the trunk, shallow to deep."""
        conv3_3, conv4_3, conv5_3, fc7 = vgg_stages(self.vgg, x)
        conv6_2, conv7_2 = extra_stages(self.extras, fc7)
        return [conv3_3, conv4_3, conv5_3, fc7, conv6_2, conv7_2]

    def enhanced_features(self, original: list[Tensor]) -> list[Tensor]:
        """Top-down FPN (upsample × lateral) followed by a FEM per level, shallow to deep."""
        fused = [F.relu(self.fpn_topdown[0](original[-1]))]
        for step, lateral in enumerate(reversed(original[:-1]), start=1):
            top = F.relu(self.fpn_topdown[step](fused[-1]))
            fused.append(F.relu(upsample_product(top, self.fpn_latlayer[step - 1](lateral))))
        fused.reverse()
        enhanced = [fem(level) for fem, level in zip(self.fpn_fem, fused, strict=True)]
        enhanced[0] = self.L2Normef1(enhanced[0])
        enhanced[1] = self.L2Normef2(enhanced[1])
        enhanced[2] = self.L2Normef3(enhanced[2])
        return enhanced

    def forward(self, x: Tensor) -> list[HeadOutput]:
        """Mean-subtracted RGB N×3×H×W → [first shot, second (enhanced) shot]."""
        original = self.original_features(x)
        first = [
            self.L2Normof1(original[0]),
            self.L2Normof2(original[1]),
            self.L2Normof3(original[2]),
            *original[3:],
        ]
        second = self.enhanced_features(original)
        return [
            _shot(first, self.loc_pal1, self.conf_pal1),
            _shot(second, self.loc_pal2, self.conf_pal2),
        ]


def _shot(sources: list[Tensor], loc: nn.ModuleList, conf: nn.ModuleList) -> HeadOutput:
    return assemble_head(
        [head(s) for head, s in zip(loc, sources, strict=True)],
        [head(s) for head, s in zip(conf, sources, strict=True)],
    )
