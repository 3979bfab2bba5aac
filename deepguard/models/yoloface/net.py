"""YOLOv8-face's ONNX graph (FaceFusion's ``yoloface_8n.onnx``) through the shared converter.

The graph has one output, N × (4 + 1 + 5·3) × A: per anchor point its box (centre x, centre
y, width, height in input pixels), its face probability, and five keypoints (x, y,
visibility). The probability row is the output of a Sigmoid; :class:`YoloFaceNet` also reads
that Sigmoid's input, the log-odds the attack pushes down (a probability that rounds to 1.0
has no gradient left). The export declares a fixed input size (640×640): the detector pads
every picture to it, as FaceFusion does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx
from torch import Tensor, nn

from deepguard.models.onnx import (
    OnnxModule,
    fixed_input_size,
    graph_output_names,
    probe_shapes,
    producer,
)

#: rows of the output: the box, the face score, and five keypoints of three values each
BOX_ROWS = 4
SCORE_ROW = 4
ROWS = BOX_ROWS + 1 + 5 * 3


@dataclass
class YoloFaceHeads:
    """One pass: N×A×4 boxes (cx, cy, w, h, input pixels) and N×A face log-odds."""

    boxes: Tensor
    logits: Tensor


def score_logits(model: onnx.ModelProto) -> str:
    """The tensor of face log-odds: the input of the Sigmoid whose output is the score row.

    Follows the Concat tree that assembles the output, keeping track of which rows each part
    fills (from inferred shapes), down to the part that holds row 4.
    """
    (output,) = graph_output_names(model)
    height, width = fixed_input_size(model) or (640, 640)
    shapes = probe_shapes(model, model.graph.input[0].name, 1, height, width)
    tensor, row = output, SCORE_ROW
    while True:
        node = producer(model, tensor)
        if node.op_type == "Sigmoid":
            return node.input[0]
        if node.op_type != "Concat":
            raise ValueError(f"not a YOLOv8-face graph: its score row comes from {node.op_type}")
        for part in node.input:
            rows = (shapes.get(part) or (None, None))[1]
            if rows is None:
                raise ValueError(f"not a YOLOv8-face graph: the rows of {part!r} are unknown")
            if row < rows:
                tensor = part
                break
            row -= rows


class YoloFaceNet(nn.Module):
    """The converted graph, returning the boxes and the score log-odds."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        (self.output,) = graph_output_names(model)
        self.input_size = fixed_input_size(model)
        self.logits_tensor = score_logits(model)
        self.graph = OnnxModule(model, [self.output, self.logits_tensor])

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> YoloFaceNet:
        return cls(onnx.load(os.fspath(path)))

    def forward(self, x: Tensor) -> YoloFaceHeads:
        out = self.graph(x)
        rows = out[self.output]
        if rows.shape[1] != ROWS:
            raise ValueError(f"not a YOLOv8-face output: {rows.shape[1]} rows, not {ROWS}")
        logits = out[self.logits_tensor].reshape(rows.shape[0], -1)
        return YoloFaceHeads(rows[:, :BOX_ROWS].transpose(1, 2), logits)
