"""ONNX graphs as differentiable PyTorch modules, converted with onnx2torch.

Some detectors of the zoo (YuNet, SCRFD) are published only as ONNX files. ``onnx2torch`` turns
such a graph into a ``torch.fx`` module: Conv nodes become :class:`~torch.nn.Conv2d` with their
weights as parameters, other constants become buffers, so the module differentiates with
respect to its input and moves with ``.to(device)``. :class:`OnnxModule` adds what the
detectors need on top:

* **Named tensors out.** ``forward`` returns ``{tensor name: Tensor}`` for any tensors of the
  graph, not only its outputs: the log-odds feeding a score head's Sigmoid, or backbone
  features for the FacePoison loss. Nodes that none of them depends on are pruned.
* **Live input sizes.** ``onnx2torch`` computes Resize sizes from live Shape nodes and applies
  constant Resize scales as factors, so nothing spatial is baked in there. Constant Reshape
  targets, however, are taken literally, and exporters trace at batch 1 and often bake that 1
  into them (YuNet's heads reshape to ``[1, -1, C]``), which at batch N silently merges the
  images. Before conversion, every constant Reshape target whose leading 1 stands for the
  batch is rewritten in the ONNX proto to ONNX's "copy this dimension" (0). Which dimension
  is the batch is found by shape inference at two batch sizes, never guessed. A Reshape to a
  fully fixed shape that depends on the image size, or a Resize to constant sizes, would bake
  the export size in; such graphs are refused with a ``ValueError`` at load time, unless the
  graph declares a fixed input size (YOLOv8 exports: 640×640), which its detector then pads
  every picture to (:func:`fixed_input_size`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx2torch
from onnx import numpy_helper, shape_inference
from torch import Tensor, nn

# onnx2torch's Slice indexes with a list of slices, which torch (2.14 still) accepts with a
# deprecation warning on every call. Its results are checked against onnxruntime and
# insightface by the tests, which would catch the day the meaning changes.
warnings.filterwarnings(
    "ignore",
    message="Using a non-tuple sequence for multidimensional indexing",
    category=UserWarning,
    module=r"onnx2torch\.",
)

#: (batch, height, width) of the input for the shape probes: two batch sizes tell the batch
#: dimension apart, two image sizes tell sizes that follow the image from fixed ones.
_PROBES = ((2, 128, 192), (3, 128, 192), (2, 192, 256))


class OnnxModule(nn.Module):
    """An ONNX graph with one image input, returning the named tensors it was built for."""

    def __init__(self, model: onnx.ModelProto, outputs: Sequence[str] | None = None) -> None:
        """``outputs``: tensors ``forward`` returns, in order; the graph's outputs by default."""
        super().__init__()
        graph_input = input_name(model)
        names = tuple(dict.fromkeys(graph_output_names(model) if outputs is None else outputs))
        prepared = _with_outputs(_with_constants_as_initializers(model), names)
        _make_input_sizes_live(prepared, graph_input)
        self.input_name = graph_input
        self.output_names = names
        self.net = onnx2torch.convert(prepared)
        self._producers = {name: node for node in prepared.graph.node for name in node.output}

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], outputs: Sequence[str] | None = None
    ) -> OnnxModule:
        """Load an ``.onnx`` file (weights included) and convert it."""
        return cls(onnx.load(os.fspath(path)), outputs)

    def module_computing(self, tensor: str) -> nn.Module | None:
        """The converted module that computes ``tensor`` (onnx2torch names its modules after
        the graph's nodes), to hook; ``None`` where no module does (a functional node)."""
        node = self._producers.get(tensor)
        if node is None or not node.name:
            return None
        modules = dict(self.net.named_modules())
        for name in (node.name, node.name.replace("/", "_").replace(".", "_").lstrip("_")):
            if name in modules:
                return modules[name]
        return None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        values = self.net(x)
        if isinstance(values, Tensor):
            values = (values,)
        return dict(zip(self.output_names, values, strict=True))


def graph_file(
    detector: str, weights: Mapping[str, os.PathLike[str]] | None, name: str, options: Mapping
) -> str:
    """The ONNX file a graph-defined detector is built from: the graph is the architecture,
    so unlike the others such a detector has no randomly initialised form."""
    if options:
        raise ValueError(f"{detector} takes no options, got {sorted(options)}")
    if weights is None or name not in weights:
        raise ValueError(
            f"{detector} is defined by its ONNX graph and needs {name!r}; "
            "it cannot be built with random initialisation"
        )
    return os.fspath(weights[name])


def input_name(model: onnx.ModelProto) -> str:
    """The graph's one data input (initialisers listed as inputs do not count)."""
    constants = {init.name for init in model.graph.initializer}
    inputs = [value.name for value in model.graph.input if value.name not in constants]
    if len(inputs) != 1:
        raise ValueError(f"expected an ONNX graph with one input, got {inputs}")
    return inputs[0]


def graph_output_names(model: onnx.ModelProto) -> tuple[str, ...]:
    return tuple(value.name for value in model.graph.output)


def producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    """The node that computes ``tensor``."""
    for node in model.graph.node:
        if tensor in node.output:
            return node
    raise KeyError(f"no node of the ONNX graph computes {tensor!r}")


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _with_constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which every Constant node holding a tensor, and every Identity of an
    initialiser, is an initialiser under its output's name. Exporters write Reshape targets
    as Constant nodes and share equal weights through Identity nodes (torch.onnx without
    onnxsim, e.g. an ultralytics export); onnx2torch wants a Conv's weights to be initialisers,
    and the batch rewrite below finds Reshape targets among them."""
    constants = {init.name: init for init in model.graph.initializer}
    folded: list[onnx.TensorProto] = []
    kept: list[onnx.NodeProto] = []
    for node in model.graph.node:
        value = attributes(node).get("value") if node.op_type == "Constant" else None
        if isinstance(value, onnx.TensorProto):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
        elif node.op_type == "Identity" and node.input[0] in constants:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(constants[node.input[0]])
        else:
            kept.append(node)
            continue
        tensor.name = node.output[0]
        folded.append(tensor)
    if not folded:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    copy.graph.initializer.extend(folded)
    return copy


def _with_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """A copy whose outputs are ``outputs``, without the nodes none of them needs.

    Recorded shapes are dropped: they were inferred at the export size and would contradict
    other sizes; onnx2torch infers them again.
    """
    graph_input = input_name(model)
    nodes = model.graph.node
    producers = {name: index for index, node in enumerate(nodes) for name in node.output}
    unknown = [name for name in outputs if name not in producers]
    if unknown:
        raise KeyError(f"no tensor(s) named {unknown} computed in the ONNX graph")
    for name in outputs:
        if len(nodes[producers[name]].output) != 1:
            raise ValueError(f"{name!r} comes from a node with several outputs; not supported")
    needed: set[int] = set()
    stack = list(outputs)
    while stack:
        index = producers[stack.pop()]
        if index not in needed:
            needed.add(index)
            stack.extend(name for name in nodes[index].input if name in producers)
    kept_nodes = [node for index, node in enumerate(nodes) if index in needed]
    used = {name for node in kept_nodes for name in node.input}
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    graph = prepared.graph
    del graph.node[:]
    graph.node.extend(kept_nodes)
    kept_inits = [init for init in model.graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    kept_inputs = [value for value in model.graph.input if value.name == graph_input]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    del graph.value_info[:]
    del graph.output[:]
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    return prepared


def probe_shapes(
    model: onnx.ModelProto, graph_input: str, batch: int, height: int, width: int
) -> dict[str, tuple[int | None, ...]]:
    """Every tensor's shape for one concrete input size (None for a dimension not inferred)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    (value,) = (v for v in probe.graph.input if v.name == graph_input)
    dims = value.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError(f"expected an N×C×H×W input, got rank {len(dims)}")
    for dim, size in zip(dims, (batch, None, height, width), strict=True):
        if size is not None:
            dim.Clear()
            dim.dim_value = size
    inferred = shape_inference.infer_shapes(probe, data_prop=True).graph
    shapes = {}
    for info in [*inferred.value_info, *inferred.output]:
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None
                for d in info.type.tensor_type.shape.dim
            )
    return shapes


def fixed_input_size(model: onnx.ModelProto) -> tuple[int, int] | None:
    """The (height, width) the graph's input declares, when both are fixed numbers."""
    (value,) = (v for v in model.graph.input if v.name == input_name(model))
    dims = value.type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[2:]):
        return None
    return dims[2].dim_value, dims[3].dim_value


def _make_input_sizes_live(model: onnx.ModelProto, graph_input: str) -> None:
    """Make Reshape targets follow the live batch, in place; refuse baked image sizes.

    See the module docstring for why and how. A graph with a fixed input size is probed at
    that size only (two batch sizes), so its size-dependent Reshape targets stay as they are.
    A target of ``[1, C, -1]`` lets the batch flow into the last dimension, which hides it
    from the Reshapes after it; so the shapes are inferred again after each round of
    rewrites, until none is left.
    """
    fixed = fixed_input_size(model)
    inputs = _PROBES if fixed is None else ((2, *fixed), (3, *fixed), (2, *fixed))
    constants = {init.name: init for init in model.graph.initializer}
    for _ in range(len(model.graph.node) + 1):
        probes = [probe_shapes(model, graph_input, *probe) for probe in inputs]
        rewritten = False
        for index, node in enumerate(model.graph.node):
            sizes = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 else ""
            if sizes in constants and numpy_helper.to_array(constants[sizes]).size:
                raise ValueError(f"Resize node {node.name or index!r} has constant output sizes")
            if node.op_type != "Reshape" or node.input[1] not in constants:
                continue
            target = numpy_helper.to_array(constants[node.input[1]]).astype(np.int64)
            shapes = [probe.get(node.input[0]) for probe in probes]
            if any(shape is None or None in shape for shape in shapes):
                continue  # shape inference could not follow this far: leave it as exported
            batched = [shape[0] for shape in shapes[:2]] == [b for b, _, _ in inputs[:2]]
            if batched and target.size > 1 and target[0] == 1:
                target[0] = 0
                name = f"{node.input[1]}__live_batch_{index}"
                constants[name] = numpy_helper.from_array(target, name)
                model.graph.initializer.append(constants[name])
                node.input[1] = name
                rewritten = True
                continue
            if not rewritten and not all(_reshape_fits(target, shape) for shape in shapes):
                raise ValueError(
                    f"Reshape node {node.name or index!r} has the fixed target "
                    f"{target.tolist()} but its input grows with the image: the export size "
                    "is baked in"
                )
        if not rewritten:
            return


def _reshape_fits(target: np.ndarray, shape: Sequence[int]) -> bool:
    """Whether a Reshape target (ONNX semantics: 0 copies, -1 infers) fits an input shape."""
    if (target == -1).any():
        return True
    copied = [shape[i] if size == 0 else int(size) for i, size in enumerate(target)]
    return int(np.prod(copied)) == int(np.prod(shape))


def trace_back(
    model: onnx.ModelProto, tensor: str, through: Iterable[str]
) -> tuple[str, list[onnx.NodeProto]]:
    """Follow ``tensor`` back through nodes of the ``through`` op types.

    Returns the first tensor computed by another kind of node, and the nodes passed on the
    way (nearest first), so a caller can check the layout ops it skipped.
    """
    kinds = set(through)
    passed: list[onnx.NodeProto] = []
    node = producer(model, tensor)
    while node.op_type in kinds:
        passed.append(node)
        tensor = node.input[0]
        node = producer(model, tensor)
    return tensor, passed


def sigmoid_inputs(model: onnx.ModelProto) -> Mapping[str, str]:
    """``{Sigmoid output: Sigmoid input}``: where a head's probabilities have log-odds."""
    return {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "Sigmoid"}
