"""FaceBoxes (Zhang et al., 2017), as trained by zisianw/FaceBoxes.PyTorch.

The layout (and every parameter name) follows that checkpoint: a Rapidly Digested
Convolutional Layers stem (``conv1``, ``conv2``, both CReLU) that shrinks the image 32×
cheaply, then Multiple Scale Convolutional Layers (three Inception blocks and two
conv pairs) whose outputs at strides 32, 64 and 128 feed the ``loc``/``conf`` heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: anchors per cell of each detection source: 21 = 16 (size 32, 4×4 dense) + 4 (size 64,
#: 2×2 dense) + 1 (size 128) at stride 32, then one anchor each at strides 64 and 128
ANCHORS_PER_CELL = (21, 1, 1)


class BasicConv2d(nn.Module):
    """Conv (no bias) → BatchNorm → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class CReLU(nn.Module):
    """Conv → BatchNorm → concat(x, −x) → ReLU: doubles the channels at half the cost."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(torch.cat([x, -x], dim=1))


class Inception(nn.Module):
    """Four 32-channel branches (1×1, pool→1×1, 3×3, 3×3→3×3) widening the receptive field."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(channels, 32, kernel_size=1)
        self.branch1x1_2 = BasicConv2d(channels, 32, kernel_size=1)
        self.branch3x3_reduce = BasicConv2d(channels, 24, kernel_size=1)
        self.branch3x3 = BasicConv2d(24, 32, kernel_size=3, padding=1)
        self.branch3x3_reduce_2 = BasicConv2d(channels, 24, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(24, 32, kernel_size=3, padding=1)
        self.branch3x3_3 = BasicConv2d(32, 32, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branches = [
            self.branch1x1(x),
            self.branch1x1_2(pooled),
            self.branch3x3(self.branch3x3_reduce(x)),
            self.branch3x3_3(self.branch3x3_2(self.branch3x3_reduce_2(x))),
        ]
        return torch.cat(branches, dim=1)


class FaceBoxesNet(nn.Module):
    """Backbone plus SSD-style heads; returns raw box offsets and two-class logits.

    Every layer rounds its output size up (``ceil(H / stride)``), so any input size works
    without padding and the detection grids are ``ceil(H / s) × ceil(W / s)`` for
    ``s`` in 32, 64, 128.
    """

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        # Rapidly Digested Convolutional Layers
        self.conv1 = CReLU(3, 24, kernel_size=7, stride=4, padding=3)
        self.conv2 = CReLU(48, 64, kernel_size=5, stride=2, padding=2)
        # Multiple Scale Convolutional Layers
        self.inception1 = Inception()
        self.inception2 = Inception()
        self.inception3 = Inception()
        self.conv3_1 = BasicConv2d(128, 128, kernel_size=1)
        self.conv3_2 = BasicConv2d(128, 256, kernel_size=3, stride=2, padding=1)
        self.conv4_1 = BasicConv2d(256, 128, kernel_size=1)
        self.conv4_2 = BasicConv2d(128, 256, kernel_size=3, stride=2, padding=1)
        source_channels = (128, 256, 256)
        self.loc = nn.Sequential(
            *(
                nn.Conv2d(c, a * 4, kernel_size=3, padding=1)
                for c, a in zip(source_channels, ANCHORS_PER_CELL, strict=True)
            )
        )
        self.conf = nn.Sequential(
            *(
                nn.Conv2d(c, a * num_classes, kernel_size=3, padding=1)
                for c, a in zip(source_channels, ANCHORS_PER_CELL, strict=True)
            )
        )

    def sources(self, x: Tensor) -> dict[str, Tensor]:
        """The three detection sources (strides 32, 64, 128), keyed by module name."""
        x = F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)
        x = F.max_pool2d(self.conv2(x), kernel_size=3, stride=2, padding=1)
        s1 = self.inception3(self.inception2(self.inception1(x)))
        s2 = self.conv3_2(self.conv3_1(s1))
        s3 = self.conv4_2(self.conv4_1(s2))
        return {"inception3": s1, "conv3_2": s2, "conv4_2": s3}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``loc`` N×A×4 offsets and ``conf`` N×A×num_classes logits."""
        batch = x.shape[0]
        locs, confs = [], []
        for source, loc, conf in zip(self.sources(x).values(), self.loc, self.conf, strict=True):
            # NCHW → NHWC so anchors run cell by cell, matching the prior order
            locs.append(loc(source).permute(0, 2, 3, 1).reshape(batch, -1, 4))
            confs.append(conf(source).permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes))
        return torch.cat(locs, dim=1), torch.cat(confs, dim=1)
