"""RetinaFace-ResNet-50 in the layout of biubug6/Pytorch_Retinaface and facexlib.

The same FPN, SSH and heads as the MobileNet-0.25 net (:mod:`deepguard.models.retinaface.net`,
256 channels instead of 64; with more than 64 channels the reference activations are plain
ReLU there too), on torchvision's ResNet-50 cut after ``layer4``. The reference wraps the
ResNet in torchvision's ``IntermediateLayerGetter``, so its parameters are named
``body.conv1.weight``, ``body.layer2.0.conv1.weight`` and so on: the attributes here are the
ResNet's own, under ``body``. The published file was saved from ``DataParallel`` (a
``module.`` prefix, which :func:`~deepguard.models.base.read_state_dict` strips).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet50

from deepguard.models.retinaface.net import RetinaFace

#: the FPN's and the heads' width in the ResNet-50 configuration (``cfg_re50``)
OUT_CHANNELS = 256


class ResNet50Body(nn.Module):
    """torchvision's ResNet-50 up to ``layer4``; returns layers 2, 3 and 4 (strides 8-32)."""

    out_channels = (512, 1024, 2048)

    def __init__(self) -> None:
        super().__init__()
        net = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4,
        )  # fmt: skip

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


def retinaface_r50() -> RetinaFace:
    """The network, randomly initialised."""
    return RetinaFace(OUT_CHANNELS, body=ResNet50Body())
