"""YuNet as a differentiable PyTorch module, rebuilt from OpenCV zoo's ONNX graph.

OpenCV zoo publishes YuNet only as an ONNX file, and its graph is made of a handful of
plain operators (Conv with the BatchNorms folded in, Relu, MaxPool, nearest Resize, Add,
and Transpose/Reshape/Sigmoid in the heads). Rather than pulling in a general converter, this
module parses the graph with ``onnx``, turns every Conv initialiser into a registered
:class:`~torch.nn.Conv2d` (so ``parameters()``/``state_dict()`` work and the model moves with
``.to()``), and replays the nodes in topological order with torch ops. Anything outside that
operator set is refused with a ``ValueError`` at load time, never silently approximated.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import Tensor, nn

SUPPORTED_OPS = frozenset(
    {"Conv", "Relu", "MaxPool", "Resize", "Reshape", "Transpose", "Add", "Sigmoid"}
)


@dataclass(frozen=True)
class GraphNode:
    """One compiled ONNX node: its tensor inputs, its output, and its folded constants."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    output: str
    params: Mapping[str, Any] = field(default_factory=dict)


class OnnxGraph(nn.Module):
    """Replays a Conv/Relu/MaxPool/Resize/Reshape/Transpose/Add/Sigmoid ONNX graph in torch.

    Conv modules live in ``self.convs`` under their (sanitised) ONNX node names, e.g.
    ``convs.Conv_0.weight``. Every other initialiser (Reshape shapes, Resize scales) is folded
    into the node that uses it, since it is a constant and not a learnable tensor.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        initialisers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        graph_inputs = [i.name for i in graph.input if i.name not in initialisers]
        if len(graph_inputs) != 1:
            raise ValueError(f"expected one graph input, got {graph_inputs}")
        self.input_name: str = graph_inputs[0]
        self.output_names: tuple[str, ...] = tuple(o.name for o in graph.output)
        self.convs = nn.ModuleDict()
        state: dict[str, Tensor] = {}
        nodes = []
        for index, node in enumerate(_topological_order(graph.node, initialisers)):
            if node.op_type not in SUPPORTED_OPS:
                raise ValueError(
                    f"unsupported ONNX op {node.op_type!r} (node {node.name or index!r}); "
                    f"supported: {', '.join(sorted(SUPPORTED_OPS))}"
                )
            if len(node.output) != 1:
                raise ValueError(f"node {node.name!r} ({node.op_type}) must have one output")
            if node.op_type == "Conv":
                key = self._module_key(node, index)
                conv, weights = _build_conv(node, initialisers)
                self.convs[key] = conv
                state.update({f"convs.{key}.{name}": value for name, value in weights.items()})
                nodes.append(
                    GraphNode("Conv", node.name, (node.input[0],), node.output[0], {"module": key})
                )
            else:
                nodes.append(_compile_node(node, initialisers))
        self.nodes: tuple[GraphNode, ...] = tuple(nodes)
        self._producers = {node.output: index for index, node in enumerate(self.nodes)}
        self._plans: dict[tuple[str, ...], tuple[GraphNode, ...]] = {}
        self.load_state_dict(state, strict=True)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> OnnxGraph:
        """Parse an ``.onnx`` file (weights included) into a module."""
        return cls(onnx.load(os.fspath(path)))

    def _module_key(self, node: onnx.NodeProto, index: int) -> str:
        key = re.sub(r"[^0-9A-Za-z_]", "_", node.name) or f"conv_{index}"
        if key in self.convs:
            key = f"{key}_{index}"
        return key

    @property
    def tensor_names(self) -> frozenset[str]:
        """Every tensor a forward pass can return."""
        return frozenset(self._producers) | {self.input_name}

    def forward(self, x: Tensor, outputs: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Run the graph on ``x`` and return the requested tensors (default: graph outputs).

        Only the nodes those tensors depend on are run, so asking for backbone features or
        for the box heads does not pay for the other heads.
        """
        wanted = tuple(dict.fromkeys(self.output_names if outputs is None else outputs))
        values: dict[str, Tensor] = {self.input_name: x}
        for node in self._plan(wanted):
            values[node.output] = self._run(node, [values[name] for name in node.inputs])
        return {name: values[name] for name in wanted}

    def _plan(self, wanted: tuple[str, ...]) -> tuple[GraphNode, ...]:
        """The nodes (in execution order) that ``wanted`` depends on; cached per request."""
        if wanted not in self._plans:
            unknown = set(wanted) - self.tensor_names
            if unknown:
                raise KeyError(f"no tensor(s) named {sorted(unknown)} in the graph")
            needed: set[int] = set()
            stack = [name for name in wanted if name != self.input_name]
            while stack:
                index = self._producers[stack.pop()]
                if index not in needed:
                    needed.add(index)
                    stack.extend(i for i in self.nodes[index].inputs if i != self.input_name)
            self._plans[wanted] = tuple(self.nodes[i] for i in sorted(needed))
        return self._plans[wanted]

    def _run(self, node: GraphNode, args: list[Tensor]) -> Tensor:
        op, params = node.op_type, node.params
        if op == "Conv":
            return self.convs[params["module"]](args[0])
        if op == "Relu":
            return F.relu(args[0])
        if op == "Sigmoid":
            return torch.sigmoid(args[0])
        if op == "Add":
            return args[0] + args[1]
        if op == "MaxPool":
            return F.max_pool2d(args[0], **params)
        if op == "Resize":
            return F.interpolate(args[0], **params)
        if op == "Transpose":
            return args[0].permute(*params["perm"])
        if op == "Reshape":
            return _reshape(args[0], params["shape"])
        raise ValueError(f"unsupported ONNX op {op!r} (node {node.name!r})")


def _topological_order(
    nodes: Sequence[onnx.NodeProto], initialisers: Mapping[str, np.ndarray]
) -> list[onnx.NodeProto]:
    """Kahn ordering; ONNX promises sorted graphs, but not every exporter keeps the promise."""
    producers = {out: n for n, node in enumerate(nodes) for out in node.output}
    pending = list(range(len(nodes)))
    done: set[str] = set()
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [
            n
            for n in pending
            if all(
                i == "" or i in initialisers or i not in producers or i in done
                for i in nodes[n].input
            )
        ]
        if not ready:
            raise ValueError("the ONNX graph has a cycle")
        for n in ready:
            ordered.append(nodes[n])
            done.update(nodes[n].output)
        pending = [n for n in pending if n not in ready]
    return ordered


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _constant(node: onnx.NodeProto, index: int, initialisers: Mapping[str, np.ndarray]) -> Any:
    """Input ``index`` of ``node`` as a numpy constant (None when absent or empty)."""
    if index >= len(node.input) or node.input[index] == "":
        return None
    name = node.input[index]
    if name not in initialisers:
        raise ValueError(
            f"{node.op_type} node {node.name!r}: input {name!r} must be a constant initialiser"
        )
    value = initialisers[name]
    return None if value.size == 0 else value


def _symmetric_padding(node: onnx.NodeProto, pads: Sequence[int]) -> tuple[int, int]:
    """ONNX pads are (top, left, bottom, right); torch only pads symmetrically."""
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise ValueError(f"{node.op_type} node {node.name!r}: asymmetric pads {list(pads)}")
    return int(pads[0]), int(pads[1])


def _check_auto_pad(node: onnx.NodeProto, attrs: Mapping[str, Any]) -> None:
    if attrs.get("auto_pad", "NOTSET") != "NOTSET":
        raise ValueError(f"{node.op_type} node {node.name!r}: auto_pad={attrs['auto_pad']!r}")


def _build_conv(
    node: onnx.NodeProto, initialisers: Mapping[str, np.ndarray]
) -> tuple[nn.Conv2d, dict[str, Tensor]]:
    """An ``nn.Conv2d`` shaped like the node, plus the weights to load into it."""
    attrs = _attributes(node)
    _check_auto_pad(node, attrs)
    weight = _constant(node, 1, initialisers)
    if weight is None or weight.ndim != 4:
        raise ValueError(f"Conv node {node.name!r}: only 2-D convolutions are supported")
    bias = _constant(node, 2, initialisers)
    groups = int(attrs.get("group", 1))
    conv = nn.Conv2d(
        in_channels=weight.shape[1] * groups,
        out_channels=weight.shape[0],
        kernel_size=tuple(weight.shape[2:]),
        stride=tuple(attrs.get("strides", (1, 1))),
        padding=_symmetric_padding(node, attrs.get("pads", (0, 0, 0, 0))),
        dilation=tuple(attrs.get("dilations", (1, 1))),
        groups=groups,
        bias=bias is not None,
    )
    weights = {"weight": torch.from_numpy(weight.astype(np.float32))}
    if bias is not None:
        weights["bias"] = torch.from_numpy(bias.astype(np.float32))
    return conv, weights


def _compile_node(node: onnx.NodeProto, initialisers: Mapping[str, np.ndarray]) -> GraphNode:
    """Fold a non-Conv node's attributes and constant inputs into torch-ready parameters."""
    attrs = _attributes(node)
    compile_params = {
        "MaxPool": _maxpool_params,
        "Resize": _resize_params,
        "Reshape": _reshape_params,
        "Transpose": _transpose_params,
    }.get(node.op_type)
    params = compile_params(node, attrs, initialisers) if compile_params else {}
    arity = {"Add": 2}.get(node.op_type, 1)
    tensor_inputs = tuple(node.input[:arity])
    for name in tensor_inputs:
        if name in initialisers:
            raise ValueError(f"{node.op_type} node {node.name!r}: constant operand {name!r}")
    return GraphNode(node.op_type, node.name, tensor_inputs, node.output[0], params)


def _maxpool_params(
    node: onnx.NodeProto, attrs: Mapping[str, Any], _: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    _check_auto_pad(node, attrs)
    if attrs.get("storage_order", 0) != 0:
        raise ValueError(f"MaxPool node {node.name!r}: storage_order must be 0")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    return {
        "kernel_size": kernel,
        "stride": tuple(int(s) for s in attrs.get("strides", (1,) * len(kernel))),
        "padding": _symmetric_padding(node, attrs.get("pads", (0, 0, 0, 0))),
        "dilation": tuple(int(d) for d in attrs.get("dilations", (1,) * len(kernel))),
        "ceil_mode": bool(attrs.get("ceil_mode", 0)),
    }


def _transpose_params(
    node: onnx.NodeProto, attrs: Mapping[str, Any], _: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    if "perm" not in attrs:
        raise ValueError(f"Transpose node {node.name!r}: needs an explicit perm")
    return {"perm": tuple(int(p) for p in attrs["perm"])}


def _resize_params(
    node: onnx.NodeProto, attrs: Mapping[str, Any], initialisers: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Map ONNX Resize (opset 11+: X, roi, scales, sizes) onto ``F.interpolate``."""
    mode = attrs.get("mode", "nearest")
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest":
        # torch's "nearest" is exactly ONNX nearest with asymmetric coordinates and floor.
        if transform != "asymmetric" or attrs.get("nearest_mode", "round_prefer_floor") != "floor":
            raise ValueError(
                f"Resize node {node.name!r}: nearest mode needs asymmetric coordinates and "
                f"nearest_mode=floor, got {transform!r}/{attrs.get('nearest_mode')!r}"
            )
        params: dict[str, Any] = {"mode": "nearest"}
    elif mode == "linear" and transform in {"half_pixel", "pytorch_half_pixel", "align_corners"}:
        params = {"mode": "bilinear", "align_corners": transform == "align_corners"}
    else:
        raise ValueError(f"Resize node {node.name!r}: unsupported mode {mode!r}/{transform!r}")
    scales = _constant(node, 2, initialisers)
    sizes = _constant(node, 3, initialisers)
    if scales is not None:
        if scales.shape != (4,) or tuple(scales[:2]) != (1.0, 1.0):
            raise ValueError(f"Resize node {node.name!r}: only spatial scales, got {scales}")
        params["scale_factor"] = (float(scales[2]), float(scales[3]))
    elif sizes is not None:
        params["size"] = (int(sizes[2]), int(sizes[3]))
    else:
        raise ValueError(f"Resize node {node.name!r}: needs constant scales or sizes")
    return params


def _reshape_params(
    node: onnx.NodeProto, attrs: Mapping[str, Any], initialisers: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Reshape target with the batch entry made live.

    The exporter traced YuNet at batch 1 and baked that 1 into every head Reshape
    (``[1, -1, C]``: N×H×W×C → N×(H·W)×C). The spatial part is already ``-1``, so only the
    leading 1 needs to follow the live batch; it becomes ONNX's "copy this dimension" (0).
    """
    if attrs.get("allowzero", 0):
        raise ValueError(f"Reshape node {node.name!r}: allowzero=1 is not supported")
    shape = _constant(node, 1, initialisers)
    if shape is None:
        raise ValueError(f"Reshape node {node.name!r}: needs a constant shape")
    target = [int(s) for s in shape]
    if target and target[0] == 1:
        target[0] = 0
    return {"shape": tuple(target)}


def _reshape(x: Tensor, shape: Sequence[int]) -> Tensor:
    """ONNX Reshape semantics: 0 copies the input's dimension, -1 is inferred."""
    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])
