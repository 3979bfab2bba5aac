"""PyramidBox: a context-assisted single shot face detector (Tang et al., ECCV 2018).

Layer names follow yxlijun/Pyramidbox.pytorch (``pyramidbox.py``) so its checkpoint loads with
``strict=True``. Low-level FPN (LFPN) fuses fc7 down to conv3_3, every level then goes through a
context-sensitive prediction module (CPM), and each head predicts a face and a head "pyramid
anchor"; only the face branch is used at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepguard.models.s3fd.ssd import (
    SOURCE_CHANNELS,
    HeadOutput,
    L2Norm,
    assemble_head,
    extra_stages,
    maxout_background,
    ssd_extras,
    upsample_product,
    vgg16_layers,
    vgg_stages,
)

CPM_CHANNELS = 512
#: conv3_3 face head: 3 background logits max-out + 1 face logit; deeper levels: 1 background
#: logit + 3 face logits max-in (as in the reference).
MAX_BACKGROUND = 3
MAX_FACE = 3


class ConvBN(nn.Module):
    """Convolution followed by batch norm (no activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.bn1 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn1(self.conv1(x))


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class CPM(nn.Module):
    """Context-sensitive Prediction Module: a residual bottleneck then an SSH context block.

    The SSH block concatenates a 3×3 (256 ch) path with wider-context 5×5- and 7×7-equivalent
    paths (128 ch each), giving 512 channels for the heads.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1 = ConvBN(in_channels, 1024, 1)
        self.branch2a = ConvBN(in_channels, 256, 1)
        self.branch2b = ConvBN(256, 256, 3)
        self.branch2c = ConvBN(256, 1024, 1)
        self.ssh_1 = _conv3x3(1024, 256)
        self.ssh_dimred = _conv3x3(1024, 128)
        self.ssh_2 = _conv3x3(128, 128)
        self.ssh_3a = _conv3x3(128, 128)
        self.ssh_3b = _conv3x3(128, 128)

    def forward(self, x: Tensor) -> Tensor:
        bottleneck = self.branch2c(F.relu(self.branch2b(F.relu(self.branch2a(x)))))
        residual = F.relu(bottleneck + self.branch1(x))
        reduced = F.relu(self.ssh_dimred(residual))
        context5 = self.ssh_2(reduced)
        context7 = self.ssh_3b(F.relu(self.ssh_3a(reduced)))
        return F.relu(torch.cat((self.ssh_1(residual), context5, context7), dim=1))


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


class PyramidBox(nn.Module):
    """VGG-16 PyramidBox; ``forward`` returns the face branch as a single shot."""

    def __init__(self) -> None:
        super().__init__()
        self.vgg = nn.ModuleList(vgg16_layers(pool3_ceil=False, fc6_dilation=6))
        self.extras = nn.ModuleList(ssd_extras())
        self.L2Norm3_3 = L2Norm(256, 10)
        self.L2Norm4_3 = L2Norm(512, 8)
        self.L2Norm5_3 = L2Norm(512, 5)
        # LFPN starts at fc7 (not the top level): fc7 → conv5_3 → conv4_3 → conv3_3
        self.lfpn_topdown = nn.ModuleList(
            [_conv1x1(1024, 512), _conv1x1(512, 512), _conv1x1(512, 256)]
        )
        self.lfpn_later = nn.ModuleList(
            [_conv1x1(512, 512), _conv1x1(512, 512), _conv1x1(256, 256)]
        )
        self.cpm = nn.ModuleList(CPM(channels) for channels in SOURCE_CHANNELS)
        # every loc head predicts face (first 4) and head (last 4) offsets
        self.loc_layers = nn.ModuleList(_conv3x3(CPM_CHANNELS, 8) for _ in SOURCE_CHANNELS)
        # conf: level 0 has 4 face + 4 head logits, deeper levels 4 face + 2 head logits
        self.conf_layers = nn.ModuleList(
            _conv3x3(CPM_CHANNELS, 8 if level == 0 else 6) for level in range(len(SOURCE_CHANNELS))
        )

    def lfpn(self, conv3_3: Tensor, conv4_3: Tensor, conv5_3: Tensor, fc7: Tensor) -> list[Tensor]:
        """Low-level FPN outputs on conv3_3, conv4_3 and conv5_3 (shallow to deep)."""
        fused = fc7
        outputs = []
        for topdown, later, lateral in zip(
            self.lfpn_topdown, self.lfpn_later, (conv5_3, conv4_3, conv3_3), strict=True
        ):
            fused = F.relu(upsample_product(F.relu(topdown(fused)), later(lateral)))
            outputs.append(fused)
        return outputs[::-1]

    def context_features(self, x: Tensor) -> list[Tensor]:
        """The six CPM outputs (512 channels each), shallow to deep."""
        conv3_3, conv4_3, conv5_3, fc7 = vgg_stages(self.vgg, x)
        conv6_2, conv7_2 = extra_stages(self.extras, fc7)
        lfpn3, lfpn4, lfpn5 = self.lfpn(conv3_3, conv4_3, conv5_3, fc7)
        levels = [
            self.L2Norm3_3(lfpn3),
            self.L2Norm4_3(lfpn4),
            self.L2Norm5_3(lfpn5),
            fc7,
            conv6_2,
            conv7_2,
        ]
        return [cpm(level) for cpm, level in zip(self.cpm, levels, strict=True)]

    def forward(self, x: Tensor) -> list[HeadOutput]:
        """Mean-subtracted RGB N×3×H×W → the face branch's per-prior offsets and logits."""
        features = self.context_features(x)
        locs = [head(f)[:, :4] for head, f in zip(self.loc_layers, features, strict=True)]
        logits = []
        for level, (head, f) in enumerate(zip(self.conf_layers, features, strict=True)):
            conf = head(f)
            if level == 0:
                logits.append(maxout_background(conf[:, : MAX_BACKGROUND + 1], MAX_BACKGROUND))
            else:
                face = conf[:, 1 : MAX_FACE + 1].amax(dim=1, keepdim=True)
                logits.append(torch.cat((conf[:, :1], face), dim=1))
        return [assemble_head(locs, logits)]
