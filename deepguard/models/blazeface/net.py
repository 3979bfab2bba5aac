"""MediaPipe BlazeFace, as converted from TFLite by hollance/BlazeFace-PyTorch.

Two variants share the heads: the "front" (selfie-camera, 128×128 input) model with two
backbone stages, and the "back" (rear-camera, 256×256 input) model with one deeper
backbone plus a final stride-2 block. Batch norm was folded into the convolutions by
TFLite, so every conv carries a bias. Both produce 512 anchors on a 16×16 grid (2 per cell)
and 384 on an 8×8 grid (6 per cell): 896 in all, each with 16 regression values (box
centre and size, then six key points) and one logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_COORDS = 16


def tflite_same_pad(x: Tensor) -> Tensor:
    """Zero-pad right/bottom by 2: TFLite's SAME padding for a stride-2 3×3 conv."""
    return F.pad(x, (0, 2, 0, 2))


class BlazeBlock(nn.Module):
    """Depthwise 3×3 + pointwise 1×1 with a residual connection.

    With stride 2 the residual is max-pooled; when the block widens, the residual is
    zero-padded along the channels (no projection conv, as in MediaPipe).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.channel_pad = out_channels - in_channels
        self.convs = nn.Sequential(
            nn.Conv2d(
                in_channels,
                in_channels,
                3,
                stride,
                padding=1 if stride == 1 else 0,
                groups=in_channels,
            ),
            nn.Conv2d(in_channels, out_channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 2:
            h = self.convs(tflite_same_pad(x))
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        else:
            h = self.convs(x)
        if self.channel_pad > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, self.channel_pad))
        return F.relu(h + x)


class FinalBlazeBlock(nn.Module):
    """Stride-2 depthwise + pointwise block without a residual (back model's 8×8 stage)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(channels, channels, 3, stride=2, groups=channels),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.convs(tflite_same_pad(x)))


def stem() -> list[nn.Module]:
    """5×5 stride-2 conv + ReLU (input is padded TFLite-style in ``BlazeFaceNet.forward``)."""
    return [nn.Conv2d(3, 24, kernel_size=5, stride=2), nn.ReLU()]


def blocks(spec: list[tuple[int, int, int]]) -> list[nn.Module]:
    """BlazeBlocks from (in, out, stride) triples."""
    return [BlazeBlock(cin, cout, stride) for cin, cout, stride in spec]


class BlazeFaceNet(nn.Module):
    """Backbone plus the two anchor heads; input is N×3×S×S in [-1, 1], S = 128 or 256."""

    def __init__(self, back_model: bool = False) -> None:
        super().__init__()
        self.back_model = back_model
        if back_model:
            self.backbone = nn.Sequential(
                *stem(),
                *blocks([(24, 24, 1)] * 7 + [(24, 24, 2)] + [(24, 24, 1)] * 7),
                *blocks([(24, 48, 2)] + [(48, 48, 1)] * 7),
                *blocks([(48, 96, 2)] + [(96, 96, 1)] * 7),
            )
            self.final = FinalBlazeBlock(96)
            channels_16 = 96
        else:
            self.backbone1 = nn.Sequential(
                *stem(),
                *blocks([(24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1)]),
                *blocks([(42, 48, 2), (48, 56, 1), (56, 64, 1), (64, 72, 1), (72, 80, 1)]),
                *blocks([(80, 88, 1)]),
            )
            self.backbone2 = nn.Sequential(*blocks([(88, 96, 2)] + [(96, 96, 1)] * 4))
            channels_16 = 88
        self.classifier_8 = nn.Conv2d(channels_16, 2, 1)
        self.classifier_16 = nn.Conv2d(96, 6, 1)
        self.regressor_8 = nn.Conv2d(channels_16, 2 * NUM_COORDS, 1)
        self.regressor_16 = nn.Conv2d(96, 6 * NUM_COORDS, 1)

    def stages(self, x: Tensor) -> dict[str, Tensor]:
        """Stride-4 (32×32 for the front model, 64×64 for the back), 16×16 and 8×8 maps.

        Keys are the module names that produce each map.
        """
        x = F.pad(x, (1, 2, 1, 2))  # TFLite SAME padding for the 5×5 stride-2 stem
        if self.back_model:
            early = self.backbone[:17](x)
            grid16 = self.backbone[17:](early)
            return {"backbone.16": early, "backbone": grid16, "final": self.final(grid16)}
        early = self.backbone1[:7](x)
        grid16 = self.backbone1[7:](early)
        return {"backbone1.6": early, "backbone1": grid16, "backbone2": self.backbone2(grid16)}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return raw regressions N×896×16 and logits N×896 (16×16 anchors first)."""
        _, grid16, grid8 = self.stages(x).values()
        return self.heads(grid16, grid8)

    def heads(self, grid16: Tensor, grid8: Tensor) -> tuple[Tensor, Tensor]:
        """Regressions and logits from the 16×16 and 8×8 maps of :meth:`stages`."""
        batch = grid16.shape[0]

        def flat(t: Tensor, width: int) -> Tensor:
            # NCHW → NHWC so anchors run cell by cell, as in the TFLite graph
            return t.permute(0, 2, 3, 1).reshape(batch, -1, width)

        boxes = torch.cat(
            [
                flat(self.regressor_8(grid16), NUM_COORDS),
                flat(self.regressor_16(grid8), NUM_COORDS),
            ],
            dim=1,
        )
        logits = torch.cat(
            [flat(self.classifier_8(grid16), 1), flat(self.classifier_16(grid8), 1)], dim=1
        )
        return boxes, logits.squeeze(-1)
