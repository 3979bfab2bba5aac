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

from deepguard.models.onnx import (
    OnnxModule,
    attributes,
    graph_output_names,
    input_name,
    probe_shapes,
    trace_back,
)

STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
#: the exporter's batch-behind-rows layout of every head (see the module docstring)
HEAD_TRANSPOSE = [2, 3, 0, 1]

#: readable names of the backbone outputs at strides 8, 16 and 32 (shallow to deep), the
#: tensors the neck's lateral convolutions read (:func:`neck_inputs` finds them in a graph)
FEATURE_NAMES = ("backbone.stride8", "backbone.stride16", "backbone.stride32")
#: ops between a lateral convolution and the top-down sum (an activation, a folded norm)
_PASS_THROUGH = {"Relu", "LeakyRelu", "BatchNormalization", "Identity"}
_UPSAMPLE = {"Resize", "Upsample"}


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


def neck_inputs(model: onnx.ModelProto) -> list[str]:
    """The backbone outputs of an SCRFD graph, shallow to deep, found by the graph's structure.

    The neck (a feature pyramid) starts with one 1×1 lateral convolution per backbone level;
    its top-down path adds each upsampled deeper level to the lateral of the level below. So:
    every Add with one input from an upsampling node and one from a (1×1) Conv names a
    lateral, whose input is that level's backbone output; the deepest lateral is the Conv the
    first upsampling reads. Tensor names differ between graphs (SCRFD-500M's are numbers,
    FaceFusion's re-exports others), so they are never looked up by name.
    """
    producers = {name: node for node in model.graph.node for name in node.output}
    shapes = probe_shapes(model, input_name(model), 1, 256, 256)

    def lateral_input(tensor: str) -> str | None:
        """The input of the 1×1 Conv that computes ``tensor`` (through pass-through ops)."""
        node = producers.get(tensor)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producers.get(node.input[0])
        if node is None or node.op_type != "Conv":
            return None
        kernel = attributes(node).get("kernel_shape", [1, 1])
        return node.input[0] if list(kernel) == [1, 1] else None

    found: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        kinds = [producers.get(name) for name in node.input]
        ups = [i for i, p in enumerate(kinds) if p is not None and p.op_type in _UPSAMPLE]
        if len(ups) != 1:
            continue
        lateral = lateral_input(node.input[1 - ups[0]])
        deeper = lateral_input(kinds[ups[0]].input[0])  # type: ignore[union-attr]
        found |= {name for name in (lateral, deeper) if name is not None}
    levels = sorted(found, key=lambda name: -_height(shapes, name))
    if len(levels) != len(STRIDES) or len({_height(shapes, n) for n in levels}) != len(levels):
        raise ValueError(
            f"not an SCRFD graph: its neck reads {len(levels)} backbone levels, not {len(STRIDES)}"
        )
    return levels


def _height(shapes: dict[str, tuple[int | None, ...]], name: str) -> int:
    shape = shapes.get(name)
    if not shape or len(shape) != 4 or shape[2] is None:
        raise ValueError(f"not an SCRFD graph: the size of {name!r} cannot be inferred")
    return shape[2]


def per_image(head: Tensor, values: int) -> Tensor:
    """N × (A·K) × H × W head map → N × (H·W·A) × K, anchors fastest as insightface orders them."""
    n = head.shape[0]
    return head.permute(0, 2, 3, 1).reshape(n, -1, values)


class SCRFDNet(nn.Module):
    """The converted graph, returning score log-odds, box distances and backbone features."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        self.score_tensors, self.distance_tensors = head_convs(model)
        self.feature_tensors = dict(zip(FEATURE_NAMES, neck_inputs(model), strict=True))
        wanted = [*self.score_tensors, *self.distance_tensors, *self.feature_tensors.values()]
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
            features={name: out[tensor] for name, tensor in self.feature_tensors.items()},
        )
