"""The shared ONNX → PyTorch converter: named outputs, live batch and image size, gradients."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from deepguard.models.onnx import OnnxModule, sigmoid_inputs, trace_back


def _tiny_model(reshape_target: list[int] | None = None) -> onnx.ModelProto:
    """Conv → Relu → MaxPool → Resize(×2) → Add → Transpose → Reshape([1, -1, 2]) → Sigmoid.

    Like an exporter traced at batch 1, the Reshape target carries a literal batch of 1.
    """
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(2,)).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([], np.float32), "roi"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.array(reshape_target or [1, -1, 2], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node(
            "Resize",
            ["p", "roi", "scales"],
            ["u"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        helper.make_node("Add", ["r", "u"], ["a"]),
        helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["f"]),
        helper.make_node("Sigmoid", ["f"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 96, 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def _reference(model: onnx.ModelProto, x: torch.Tensor) -> dict[str, torch.Tensor]:
    weight, bias = (torch.tensor(numpy_helper.to_array(i)) for i in model.graph.initializer[:2])
    r = F.relu(F.conv2d(x, weight, bias, padding=1))
    a = r + F.interpolate(F.max_pool2d(r, 2), scale_factor=2.0, mode="nearest")
    f = a.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 2)
    return {"y": f.sigmoid(), "f": f, "r": r}


def test_live_batch_and_image_size() -> None:
    model = _tiny_model()
    module = OnnxModule(model)
    for shape in [(1, 3, 8, 12), (2, 3, 8, 6), (3, 3, 20, 14)]:
        x = torch.randn(shape)
        out = module(x)
        assert list(out) == ["y"]
        torch.testing.assert_close(out["y"], _reference(model, x)["y"])


def test_intermediate_tensors_out_and_unused_nodes_pruned() -> None:
    model = _tiny_model()
    logits = sigmoid_inputs(model)["y"]
    module = OnnxModule(model, ["r", logits])
    x = torch.randn(2, 3, 8, 6)
    out = module(x)
    expected = _reference(model, x)
    assert list(out) == ["r", "f"]
    torch.testing.assert_close(out["f"], expected["f"])
    torch.testing.assert_close(out["r"], expected["r"])
    assert len(list(OnnxModule(model, ["r"]).parameters())) == 2  # the Conv only


def test_trace_back_through_layout_ops() -> None:
    tensor, passed = trace_back(_tiny_model(), "y", {"Sigmoid", "Reshape", "Transpose"})
    assert tensor == "a"
    assert [node.op_type for node in passed] == ["Sigmoid", "Reshape", "Transpose"]


def test_differentiable_and_moves_with_to() -> None:
    module = OnnxModule(_tiny_model()).requires_grad_(False)
    x = torch.randn(2, 3, 8, 6, requires_grad=True)
    module(x)["y"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    module.to(torch.float64)
    assert module(x.detach().double())["y"].dtype == torch.float64


def test_refuses_a_baked_image_size() -> None:
    with pytest.raises(ValueError, match="baked"):
        OnnxModule(_tiny_model(reshape_target=[1, 96, 2]))


def test_refuses_a_resize_to_constant_sizes() -> None:
    model = _tiny_model()
    model.graph.initializer.append(
        numpy_helper.from_array(np.array([1, 2, 8, 8], np.int64), "sizes")
    )
    resize = next(node for node in model.graph.node if node.op_type == "Resize")
    resize.input[2:] = ["", "sizes"]
    with pytest.raises(ValueError, match="constant output sizes"):
        OnnxModule(model)


def test_unknown_tensor_name() -> None:
    with pytest.raises(KeyError, match="nope"):
        OnnxModule(_tiny_model(), ["nope"])
