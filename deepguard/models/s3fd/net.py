"""S3FD: Single Shot Scale-invariant Face Detector (Zhang et al., ICCV 2017).

Layer names follow yxlijun/S3FD.pytorch so its ``s3fd.pth`` loads with ``strict=True``.
"""

from __future__ import annotations

from torch import Tensor, nn

from deepguard.models.s3fd.ssd import (
    SOURCE_CHANNELS,
    HeadOutput,
    L2Norm,
    assemble_head,
    extra_stages,
    maxout_background,
    ssd_extras,
    vgg16_layers,
    vgg_stages,
)

#: conv3_3 predicts 3 background logits + 1 face logit (the "max-out background label"): the
#: stride-4 level sees far more small background anchors than faces.
MAXOUT_BACKGROUND = 3


class S3FD(nn.Module):
    """VGG-16 trunk + two extra levels, one square prior per location at strides 4..128."""

    def __init__(self) -> None:
        super().__init__()
        self.vgg = nn.ModuleList(vgg16_layers(pool3_ceil=True, fc6_dilation=6))
        self.L2Norm3_3 = L2Norm(256, 10)
        self.L2Norm4_3 = L2Norm(512, 8)
        self.L2Norm5_3 = L2Norm(512, 5)
        self.extras = nn.ModuleList(ssd_extras())
        self.loc = nn.ModuleList(
            nn.Conv2d(channels, 4, kernel_size=3, padding=1) for channels in SOURCE_CHANNELS
        )
        conf_out = [MAXOUT_BACKGROUND + 1] + [2] * (len(SOURCE_CHANNELS) - 1)
        self.conf = nn.ModuleList(
            nn.Conv2d(channels, out, kernel_size=3, padding=1)
            for channels, out in zip(SOURCE_CHANNELS, conf_out, strict=True)
        )

    def sources(self, x: Tensor) -> list[Tensor]:
        """The six maps the heads look at (the three shallow ones L2-normalised)."""
        conv3_3, conv4_3, conv5_3, fc7 = vgg_stages(self.vgg, x)
        conv6_2, conv7_2 = extra_stages(self.extras, fc7)
        return [
            self.L2Norm3_3(conv3_3),
            self.L2Norm4_3(conv4_3),
            self.L2Norm5_3(conv5_3),
            fc7,
            conv6_2,
            conv7_2,
        ]

    def forward(self, x: Tensor) -> list[HeadOutput]:
        """Mean-subtracted RGB N×3×H×W → a single shot of per-prior offsets and logits."""
        sources = self.sources(x)
        locs = [head(source) for head, source in zip(self.loc, sources, strict=True)]
        logits = [head(source) for head, source in zip(self.conf, sources, strict=True)]
        logits[0] = maxout_background(logits[0], MAXOUT_BACKGROUND)
        return [assemble_head(locs, logits)]
