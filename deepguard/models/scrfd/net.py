"""SCRFD-500M's network: insightface's ``det_500m.onnx`` through the shared ONNX converter.

The graph's nine outputs are, in insightface's order, face probabilities (outputs 0–2), box
distances (3–5) and keypoints (6–8) at strides 8, 16 and 32. Each head is a Conv with
``anchors × values`` channels, then ``Transpose(perm=[2, 3, 0, 1])`` and ``Reshape([-1, K])``
(and a Sigmoid for the probabilities). That Transpose moves the batch behind the rows and
columns: for N > 1 the flattened rows interleave the images (row, column, image, anchor), so
the graph's own outputs cannot simply be split per image. :class:`SCRFDNet` therefore reads
the head Convs themselves (N × A·K × H × W; for the scores these are the log-odds the Sigmoid
receives, only laid out differently) and orders them per image as (row, column, anchor), the
order insightface decodes at batch 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx
from torch import Tensor, nn

from deepguard.models.onnx import OnnxModule, attributes, graph_output_names, trace_back

STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
#: the exporter's batch-behind-rows layout of every head (see the module docstring)
HEAD_TRANSPOSE = [2, 3, 0, 1]

#: Backbone (MobileNet-style) outputs at strides 8, 16 and 32, which feed the neck's lateral
#: convolutions: readable names → ONNX tensor names, shallow to deep.
FEATURE_TENSORS = {
    "backbone.stride8": "324",
    "backbone.stride16": "336",
    "backbone.stride32": "372",
}


@dataclass
class SCRFDHeads:
    """One pass of the net: per stride, N×(H·W·A) face log-odds and N×(H·W·A)×4 distances
    (left, top, right, bottom, in stride units), plus the backbone features."""

    logits: list[Tensor]
    distances: list[Tensor]
    features: dict[str, Tensor]


def head_convs(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """The tensors of the score and box head Convs, stride by stride.

    Checks on the way that each graph output is the expected layout chain, so another graph
    is refused instead of being decoded wrongly.
    """
    outputs = graph_output_names(model)
    if len(outputs) != 3 * len(STRIDES):
        raise ValueError(f"not an SCRFD graph with keypoints: {len(outputs)} outputs, not 9")
    chains = {"scores": ["Sigmoid", "Reshape", "Transpose"], "boxes": ["Reshape", "Transpose"]}
    found: dict[str, list[str]] = {"scores": [], "boxes": []}
    for kind, first in (("scores", 0), ("boxes", len(STRIDES))):
        for output in outputs[first : first + len(STRIDES)]:
            conv, passed = trace_back(model, output, {"Sigmoid", "Reshape", "Transpose"})
            ops = [node.op_type for node in passed]
            if ops != chains[kind] or attributes(passed[-1]).get("perm") != HEAD_TRANSPOSE:
                raise ValueError(f"not an SCRFD graph: output {output!r} comes from {ops}")
            found[kind].append(conv)
    return found["scores"], found["boxes"]


def per_image(head: Tensor, values: int) -> Tensor:
    """N × (A·K) × H × W head map → N × (H·W·A) × K, anchors fastest as insightface orders them."""
    n = head.shape[0]
    return head.permute(0, 2, 3, 1).reshape(n, -1, values)


class SCRFDNet(nn.Module):
    """The converted graph, returning score log-odds, box distances and backbone features."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        self.score_tensors, self.distance_tensors = head_convs(model)
        wanted = [*self.score_tensors, *self.distance_tensors, *FEATURE_TENSORS.values()]
        self.graph = OnnxModule(model, wanted)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SCRFDNet:
        return cls(onnx.load(os.fspath(path)))

    def forward(self, x: Tensor) -> SCRFDHeads:
        """``x``: N×3×H×W, normalised, H and W multiples of 32."""
        out = self.graph(x)
        return SCRFDHeads(
            logits=[per_image(out[name], 1)[..., 0] for name in self.score_tensors],
            distances=[per_image(out[name], 4) for name in self.distance_tensors],
            features={name: out[tensor] for name, tensor in FEATURE_TENSORS.items()},
        )
