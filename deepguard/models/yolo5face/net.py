"""YOLO5Face networks (deepcam-cn/yolov5-face), written out module by module.

Upstream builds these nets from ``models/yolov5*.yaml`` into one ``nn.Sequential`` named
``model``; the converted checkpoints keep those names (``model.0.stem_1.conv.weight``,
``model.21.m.2.bias``...). Here the layers sit in an ``nn.ModuleList`` called ``model`` in the
same order as the yaml, parameter-free layers (upsample, concat) included, so every index
matches the yaml line it comes from and ``load_state_dict(strict=True)`` works.

Two families share one PAN neck and the detect head:

* ShuffleNetV2 backbone (``yolov5n-0.5.yaml``, ``yolov5n.yaml``): StemBlock, then three
  ShuffleV2 stages at strides 8, 16 and 32;
* CSP backbone (``yolov5s.yaml``): StemBlock, C3 stages with stride-2 convs, and SPP with the
  face-specific small kernels (3, 5, 7).

All BatchNorms use ``eps=1e-3``: upstream's ``initialize_weights`` sets it on every
``BatchNorm2d``, and the value is not stored in a state dict.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

BN_EPS = 1e-3
#: Anchors (w, h in input pixels) per level, from the yaml: P3/8, P4/16, P5/32.
ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((4, 5), (8, 10), (13, 16)),
    ((23, 29), (43, 55), (73, 105)),
    ((146, 217), (231, 300), (335, 433)),
)
STRIDES: tuple[int, int, int] = (8, 16, 32)
#: Outputs per anchor: box (4) + objectness (1) + five landmarks (10) + face class (1).
OUTPUTS_PER_ANCHOR = 16


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.03)


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU, 'same' padding: upstream's ``Conv``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.bn = _bn(c_out)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class StemBlock(nn.Module):
    """Stride-4 stem from the YOLO5Face paper: a strided conv, then a conv path and a max-pool
    path concatenated and fused by a 1×1 conv (cheaper than Focus, same receptive field)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.stem_1 = Conv(c_in, c_out, 3, 2)
        self.stem_2a = Conv(c_out, c_out // 2, 1, 1)
        self.stem_2b = Conv(c_out // 2, c_out, 3, 2)
        self.stem_2p = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.stem_3 = Conv(c_out * 2, c_out, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_1(x)
        return self.stem_3(torch.cat((self.stem_2b(self.stem_2a(x)), self.stem_2p(x)), dim=1))


def _channel_shuffle(x: Tensor, groups: int = 2) -> Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit with SiLU. Stride 2 runs both branches on the whole input; stride 1
    passes half the channels through and transforms the other half."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        branch = c_out // 2
        if stride == 1 and c_in != c_out:
            raise ValueError("a stride-1 ShuffleV2Block keeps its channel count")
        self.stride = stride
        if stride == 2:
            self.branch1 = nn.Sequential(
                nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                _bn(c_in),
                nn.Conv2d(c_in, branch, 1, bias=False),
                _bn(branch),
                nn.SiLU(),
            )
        c_branch2 = c_in if stride == 2 else branch
        self.branch2 = nn.Sequential(
            nn.Conv2d(c_branch2, branch, 1, bias=False),
            _bn(branch),
            nn.SiLU(),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False),
            _bn(branch),
            nn.Conv2d(branch, branch, 1, bias=False),
            _bn(branch),
            nn.SiLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            passthrough, x = x.chunk(2, dim=1)
            out = torch.cat((passthrough, self.branch2(x)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return _channel_shuffle(out)


class Bottleneck(nn.Module):
    """1×1 then 3×3 conv, with a residual connection when asked (backbone C3s only)."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = Conv(channels, channels, 1, 1)
        self.cv2 = Conv(channels, channels, 3, 1)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convs: half the channels go through ``depth`` bottlenecks,
    the other half skip them, and a 1×1 conv fuses both."""

    def __init__(self, c_in: int, c_out: int, depth: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        hidden = c_out // 2
        self.cv1 = Conv(c_in, hidden, 1, 1)
        self.cv2 = Conv(c_in, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c_out, 1, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class SPP(nn.Module):
    """Spatial pyramid pooling; YOLO5Face uses small kernels (3, 5, 7) to suit faces."""

    def __init__(self, c_in: int, c_out: int, kernels: tuple[int, ...] = (3, 5, 7)) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden, 1, 1)
        self.cv2 = Conv(hidden * (len(kernels) + 1), c_out, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x, *(pool(x) for pool in self.m)], dim=1))


class Concat(nn.Module):
    """Channel concatenation; a module only so that layer indices match the yaml."""

    def forward(self, xs: list[Tensor]) -> Tensor:
        return torch.cat(xs, dim=1)


class Detect(nn.Module):
    """One 1×1 conv per level predicting 3 anchors × 16 values.

    ``anchors`` (in grid cells) and ``anchor_grid`` (in pixels) are buffers of the upstream
    checkpoint and kept under those names. ``forward`` returns raw (undecoded) outputs shaped
    N×3×H×W×16; decoding lives in the predictor.
    """

    def __init__(self, in_channels: tuple[int, int, int]) -> None:
        super().__init__()
        self.num_anchors = len(ANCHORS[0])
        self.num_outputs = OUTPUTS_PER_ANCHOR
        pixels = torch.tensor(ANCHORS, dtype=torch.float32)  # levels × anchors × 2
        strides = torch.tensor(STRIDES, dtype=torch.float32).view(-1, 1, 1)
        self.register_buffer("anchors", pixels / strides)
        self.register_buffer("anchor_grid", pixels.clone().view(len(STRIDES), 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(
            nn.Conv2d(c, self.num_anchors * self.num_outputs, 1) for c in in_channels
        )

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        out = []
        for conv, x in zip(self.m, xs, strict=True):
            y = conv(x)
            n, _, h, w = y.shape
            y = y.view(n, self.num_anchors, self.num_outputs, h, w).permute(0, 1, 3, 4, 2)
            out.append(y)
        return out

    @torch.no_grad()
    def init_biases(self) -> None:
        """Upstream's prior for a fresh model: ~8 faces per 640² image, class prob ~0.6."""
        for conv, stride in zip(self.m, STRIDES, strict=True):
            bias = conv.bias.view(self.num_anchors, -1)
            bias[:, 4] += math.log(8 / (640 / stride) ** 2)
            bias[:, 5:] += math.log(0.6 / (1 - 0.99))


class HeadWidths(NamedTuple):
    """Output channels of the PAN neck layers, top-down then bottom-up."""

    lateral5: int  # 1×1 conv on the P5 backbone output
    merge4: int  # C3 after fusing with P4
    lateral4: int  # 1×1 conv before going up to P3
    out3: int  # C3 after fusing with P3: the P3 detection input
    down3: int  # stride-2 conv from P3 to P4
    out4: int  # P4 detection input
    down4: int  # stride-2 conv from P4 to P5
    out5: int  # P5 detection input


def _pan_head(c3: int, c4: int, c5: int, w: HeadWidths, depth: int) -> list[nn.Module]:
    """The neck and Detect layers in yaml order (15 modules)."""
    return [
        Conv(c5, w.lateral5, 1, 1),
        nn.Upsample(scale_factor=2, mode="nearest"),
        Concat(),
        C3(w.lateral5 + c4, w.merge4, depth, shortcut=False),
        Conv(w.merge4, w.lateral4, 1, 1),
        nn.Upsample(scale_factor=2, mode="nearest"),
        Concat(),
        C3(w.lateral4 + c3, w.out3, depth, shortcut=False),
        Conv(w.out3, w.down3, 3, 2),
        Concat(),
        C3(w.down3 + w.lateral4, w.out4, depth, shortcut=False),
        Conv(w.out4, w.down4, 3, 2),
        Concat(),
        C3(w.down4 + w.lateral5, w.out5, depth, shortcut=False),
        Detect((w.out3, w.out4, w.out5)),
    ]


class YOLO5Face(nn.Module):
    """Backbone layers followed by the PAN neck and Detect, all in ``self.model``.

    ``taps`` are the indices of the backbone layers whose outputs (strides 8, 16, 32) feed
    the neck; the last one is the final backbone layer.
    """

    def __init__(
        self,
        backbone: list[nn.Module],
        taps: tuple[int, int, int],
        tap_channels: tuple[int, int, int],
        widths: HeadWidths,
        head_depth: int = 1,
    ) -> None:
        super().__init__()
        if taps[-1] != len(backbone) - 1:
            raise ValueError("the last tap must be the last backbone layer")
        self.taps = taps
        self.model = nn.ModuleList([*backbone, *_pan_head(*tap_channels, widths, head_depth)])
        self.detect.init_biases()

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    def backbone(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Backbone outputs at strides 8, 16 and 32."""
        outputs = {}
        for index in range(self.taps[-1] + 1):
            x = self.model[index](x)
            if index in self.taps:
                outputs[index] = x
        c3, c4, c5 = (outputs[i] for i in self.taps)
        return c3, c4, c5

    def neck(self, c3: Tensor, c4: Tensor, c5: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Top-down then bottom-up fusion (the yaml's head, minus Detect)."""
        m = self.model[self.taps[-1] + 1 :]
        lateral5 = m[0](c5)
        merged4 = m[3](m[2]([m[1](lateral5), c4]))
        lateral4 = m[4](merged4)
        p3 = m[7](m[6]([m[5](lateral4), c3]))
        p4 = m[10](m[9]([m[8](p3), lateral4]))
        p5 = m[13](m[12]([m[11](p4), lateral5]))
        return p3, p4, p5

    def forward(self, x: Tensor) -> list[Tensor]:
        """Raw detect outputs per level, each N×3×H/s×W/s×16 (x is RGB in 0..1)."""
        return self.detect(list(self.neck(*self.backbone(x))))


def _shufflenet_backbone(width: int) -> list[nn.Module]:
    """yolov5n(-0.5).yaml backbone: stem, then (1 + 3), (1 + 7), (1 + 3) ShuffleV2 blocks."""
    stem, c3, c4, c5 = width // 4, width, width * 2, width * 4
    return [
        StemBlock(3, stem),
        ShuffleV2Block(stem, c3, 2),
        nn.Sequential(*(ShuffleV2Block(c3, c3, 1) for _ in range(3))),
        ShuffleV2Block(c3, c4, 2),
        nn.Sequential(*(ShuffleV2Block(c4, c4, 1) for _ in range(7))),
        ShuffleV2Block(c4, c5, 2),
        nn.Sequential(*(ShuffleV2Block(c5, c5, 1) for _ in range(3))),
    ]


def yolo5face_shufflenet(width: int) -> YOLO5Face:
    """YOLOv5n-face (``width=128``) or YOLOv5n-0.5-face (``width=64``).

    ``width`` is the P3 backbone width; the whole neck runs at that width too.
    """
    widths = HeadWidths(*(width,) * 8)  # the neck keeps the P3 width throughout
    return YOLO5Face(_shufflenet_backbone(width), (2, 4, 6), (width, 2 * width, 4 * width), widths)


def _csp_backbone(width: int, depth: int) -> list[nn.Module]:
    """yolov5s.yaml backbone; ``width`` is the stem width, ``depth`` the unit C3 depth."""
    c2, c3, c4, c5 = width * 2, width * 4, width * 8, width * 16
    return [
        StemBlock(3, width),
        C3(width, c2, depth),
        Conv(c2, c3, 3, 2),
        C3(c3, c3, 3 * depth),
        Conv(c3, c4, 3, 2),
        C3(c4, c4, 3 * depth),
        Conv(c4, c5, 3, 2),
        SPP(c5, c5, (3, 5, 7)),
        C3(c5, c5, depth, shortcut=False),
    ]


def yolo5face_csp(width: int = 32, depth: int = 1) -> YOLO5Face:
    """YOLOv5s-face (``width=32``, ``depth=1``): CSP backbone with StemBlock and SPP."""
    c3, c4, c5 = width * 4, width * 8, width * 16
    widths = HeadWidths(
        lateral5=c4, merge4=c4, lateral4=c3, out3=c3, down3=c3, out4=c4, down4=c4, out5=c5
    )
    return YOLO5Face(_csp_backbone(width, depth), (3, 5, 8), (c3, c4, c5), widths, depth)
