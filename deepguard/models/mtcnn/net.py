"""The three MTCNN networks (Zhang et al. 2016), laid out like facenet-pytorch's checkpoints.

Parameter names (``conv1``, ``prelu1``, ``dense4``, ``conv4_1``, ...) match the state dicts
that facenet-pytorch ships, so they load with ``strict=True``. All three nets expect RGB
images normalised to ``(x - 127.5) / 128`` in the ordinary ``N×3×H×W`` layout.

The weights were converted from the original Caffe/MATLAB models, which ran on transposed
(W×H) images. The converted conv kernels work on upright images, but the fully connected
layers of R-Net and O-Net still read their input in (W, H, C) order, so the conv output is
permuted to ``N×W×H×C`` before it is flattened.
"""

from __future__ import annotations

from torch import Tensor, nn


def _flatten_wh(x: Tensor) -> Tensor:
    """N×C×H×W → N×(W·H·C), the order the converted dense layers were trained on."""
    return x.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """Proposal net: fully convolutional, one 12×12 window every 2 pixels.

    ``forward`` returns box offsets ``N×4×h×w`` (x1, y1, x2, y2, as fractions of the window)
    and face probabilities ``N×h×w``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def trunk(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The activations after ``prelu1``, ``prelu2`` and ``prelu3``."""
        c1 = self.prelu1(self.conv1(x))
        c2 = self.prelu2(self.conv2(self.pool1(c1)))
        c3 = self.prelu3(self.conv3(c2))
        return c1, c2, c3

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)[-1]
        return self.conv4_2(features), _face_logit(self.conv4_1(features), dim=1)


class RNet(nn.Module):
    """Refinement net on 24×24 crops: returns offsets ``K×4`` and face probabilities ``K``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_wh(x)))
        return self.dense5_2(x), _face_logit(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48×48 crops: offsets ``K×4``, landmarks ``K×10``, face probabilities ``K``.

    The landmarks are (x1..x5, y1..y5) as fractions of the crop; the detector does not use
    them, but the head is kept so the checkpoint loads strictly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_wh(x)))
        return self.dense6_2(x), self.dense6_3(x), _face_logit(self.dense6_1(x), dim=1)


def _face_logit(two_class: Tensor, dim: int) -> Tensor:
    """Log-odds of "face" from (non-face, face) logits: ``softmax(...)[1] == sigmoid(this)``.

    The nets return log-odds rather than probabilities because a probability that rounds to
    1.0 in float32 has no gradient left for an attack to follow.
    """
    return two_class.select(dim, 1) - two_class.select(dim, 0)
