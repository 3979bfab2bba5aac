"""S3FD (Zhang et al., 2017) in face_alignment's layout, whose file Wav2Lip ships as s3fd.pth.

face_alignment ported the authors' Caffe model into one flat module: every layer is an
attribute named after its Caffe blob (``conv1_1`` … ``conv5_3``, ``fc6``, ``fc7``,
``conv6_1`` … ``conv7_2``, the L2 norms ``conv3_3_norm`` … and the heads
``conv3_3_norm_mbox_conf`` …), so its parameter names differ from the ssd.pytorch layout of
:mod:`deepguard.models.s3fd` (``vgg.0.weight`` …). Two details of the port are kept because
the weights were trained (and are run) with them: ``fc6`` is a plain 3×3 convolution with
padding 3 (not the atrous one of the paper), so from ``fc7`` on the maps are four cells wider
than the picture's grid; and the first level predicts three background logits and one face
logit, reduced by the max-out label.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from deepguard.models.s3fd.ssd import HeadOutput, L2Norm, assemble_head, maxout_background

#: (name, in, out, kernel, stride, padding) of the trunk, in order; a max pool after the
#: last convolution of each of the first five stages
_TRUNK = (
    ("conv1_1", 3, 64, 3, 1, 1), ("conv1_2", 64, 64, 3, 1, 1),
    ("conv2_1", 64, 128, 3, 1, 1), ("conv2_2", 128, 128, 3, 1, 1),
    ("conv3_1", 128, 256, 3, 1, 1), ("conv3_2", 256, 256, 3, 1, 1),
    ("conv3_3", 256, 256, 3, 1, 1),
    ("conv4_1", 256, 512, 3, 1, 1), ("conv4_2", 512, 512, 3, 1, 1),
    ("conv4_3", 512, 512, 3, 1, 1),
    ("conv5_1", 512, 512, 3, 1, 1), ("conv5_2", 512, 512, 3, 1, 1),
    ("conv5_3", 512, 512, 3, 1, 1),
    ("fc6", 512, 1024, 3, 1, 3), ("fc7", 1024, 1024, 1, 1, 0),
    ("conv6_1", 1024, 256, 1, 1, 0), ("conv6_2", 256, 512, 3, 2, 1),
    ("conv7_1", 512, 128, 1, 1, 0), ("conv7_2", 128, 256, 3, 2, 1),
)  # fmt: skip
_POOLED = {"conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"}
#: the six prediction sources, their channels, and the L2 norm scale of the shallow three
SOURCES = (("conv3_3", 256, 10.0), ("conv4_3", 512, 8.0), ("conv5_3", 512, 5.0),
           ("fc7", 1024, None), ("conv6_2", 512, None), ("conv7_2", 256, None))  # fmt: skip
#: background logits of the first level (max-out label); one elsewhere
FIRST_BACKGROUNDS = 3


class S3FDFan(nn.Module):
    """The network; ``forward`` returns one :class:`HeadOutput` (a list, like the other SSDs)."""

    def __init__(self) -> None:
        super().__init__()
        for name, inputs, outputs, kernel, stride, padding in _TRUNK:
            self.add_module(name, nn.Conv2d(inputs, outputs, kernel, stride, padding))
        for name, channels, scale in SOURCES:
            if scale is not None:
                self.add_module(f"{name}_norm", L2Norm(channels, scale))
        for index, (name, channels, scale) in enumerate(SOURCES):
            prefix = f"{name}_norm" if scale is not None else name
            classes = FIRST_BACKGROUNDS + 1 if index == 0 else 2
            self.add_module(f"{prefix}_mbox_conf", nn.Conv2d(channels, classes, 3, 1, 1))
            self.add_module(f"{prefix}_mbox_loc", nn.Conv2d(channels, 4, 3, 1, 1))

    def forward(self, x: Tensor) -> list[HeadOutput]:
        taps: dict[str, Tensor] = {}
        for name, *_ in _TRUNK:
            x = F.relu(getattr(self, name)(x))
            taps[name] = x
            if name in _POOLED:
                x = F.max_pool2d(x, 2, 2)
        locs, logits = [], []
        for index, (name, _, scale) in enumerate(SOURCES):
            source = taps[name]
            prefix = name
            if scale is not None:
                prefix = f"{name}_norm"
                source = getattr(self, prefix)(source)
            conf = getattr(self, f"{prefix}_mbox_conf")(source)
            if index == 0:
                conf = maxout_background(conf, FIRST_BACKGROUNDS)
            logits.append(conf)
            locs.append(getattr(self, f"{prefix}_mbox_loc")(source))
        return [assemble_head(locs, logits)]
