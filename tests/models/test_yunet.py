"""YuNet: the ONNX→torch converter, and agreement with OpenCV's own FaceDetectorYN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from deepguard.models.yunet.net import OnnxGraph
from deepguard.models.yunet.predictor import WEIGHT_FILE, YuNet, load
from tests.conftest import read_rgb


@pytest.fixture(scope="module")
def yunet(weights_dir: Path) -> YuNet:
    path = weights_dir / WEIGHT_FILE
    if not path.exists():
        pytest.skip(f"{WEIGHT_FILE} not in {weights_dir}")
    return load({WEIGHT_FILE: path})


def _tiny_model(extra_op: str | None = None) -> onnx.ModelProto:
    """Conv → Relu → MaxPool → Resize(×2 nearest) → Add(skip) → Transpose → Reshape → Sigmoid."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(2,)).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([], np.float32), "roi"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.array([1, -1, 2], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="Conv_0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="Relu_1"),
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
    if extra_op is not None:
        nodes.append(helper.make_node(extra_op, ["y"], ["z"], name="Odd_9"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("z" if extra_op else "y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def test_converter_refuses_unsupported_op() -> None:
    with pytest.raises(ValueError, match="LeakyRelu"):
        OnnxGraph(_tiny_model(extra_op="LeakyRelu"))


def test_converter_replays_graph_with_live_batch() -> None:
    model = _tiny_model()
    graph = OnnxGraph(model)
    assert set(graph.state_dict()) == {"convs.Conv_0.weight", "convs.Conv_0.bias"}
    weight, bias = (torch.tensor(numpy_helper.to_array(i)) for i in model.graph.initializer[:2])
    x = torch.randn(2, 3, 8, 6)  # batch 2 although the Reshape was "exported" at batch 1
    r = F.relu(F.conv2d(x, weight, bias, padding=1))
    a = r + F.interpolate(F.max_pool2d(r, 2), scale_factor=2.0, mode="nearest")
    expected = torch.sigmoid(a.permute(0, 2, 3, 1).reshape(2, -1, 2))
    torch.testing.assert_close(graph(x)["y"], expected)


def test_matches_opencv_face_detector_yn(yunet: YuNet, weights_dir: Path, media_dir: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "FaceDetectorYN"):
        pytest.skip("this OpenCV build has no FaceDetectorYN")
    rgb = read_rgb(media_dir / "lp_s0.jpg")
    height, width = rgb.shape[:2]
    reference = cv2.FaceDetectorYN.create(str(weights_dir / WEIGHT_FILE), "", (width, height))
    _, faces = reference.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
    assert faces is not None and len(faces) == 1
    ref_box = np.concatenate([faces[0, :2], faces[0, :2] + faces[0, 2:4]])

    ours = yunet.detect(rgb)
    assert len(ours) == 1
    np.testing.assert_allclose(ours.boxes[0], ref_box, atol=2.0)
    assert abs(float(ours.scores[0]) - float(faces[0, 14])) < 1e-3


def test_any_input_size(yunet: YuNet, media_dir: Path) -> None:
    with torch.no_grad():
        dense = yunet.dense(torch.rand(2, 3, 101, 77) * 255)
    # padded to 128×96: 16·12 + 8·6 + 4·3 cells
    assert dense.scores.shape == (2, 252) and dense.boxes.shape == (2, 252, 4)

    crop = read_rgb(media_dir / "lp_s0.jpg")[:651, :589]  # neither side a multiple of 32
    found = yunet.detect(crop)
    assert len(found) == 1
    x1, y1, x2, y2 = found.boxes[0]
    assert 255 < x1 < 295 and 50 < y1 < 90 and 345 < x2 < 385 and 170 < y2 < 210


def test_features_are_backbone_strides_8_16_32(yunet: YuNet) -> None:
    with torch.no_grad():
        feats = yunet.features(torch.rand(1, 3, 96, 64) * 255)
    assert list(feats) == ["backbone.model3", "backbone.model4", "backbone.model5"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(12, 8), (6, 4), (3, 2)]


def test_load_needs_the_onnx_graph() -> None:
    with pytest.raises(ValueError, match=WEIGHT_FILE):
        load(None)
