"""The tools' own detectors, without their files (none of them is in ../shared): each loader
takes a file of the published layout, and decodes as the tool does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torchvision.models import resnet50

from deepguard.models.registry import detector_specs
from deepguard.models.retinaface_r50.predictor import WEIGHTS_FILE as R50_FILE
from deepguard.models.retinaface_r50.predictor import load as load_r50
from deepguard.models.s3fd_fan.predictor import WEIGHTS_FILE as S3FD_FILE
from deepguard.models.s3fd_fan.predictor import load as load_s3fd
from deepguard.models.yoloface.predictor import load as load_yoloface

# -- RetinaFace-ResNet-50, as facexlib's detection_Resnet50_Final.pth lays it out -----------


def _facexlib_r50_layout() -> dict[str, tuple[int, ...]]:
    """The names and shapes of facexlib's RetinaFace-R50 state dict: torchvision's ResNet-50
    under ``body`` (without the classifier), then the FPN, SSH and heads at 256 channels
    (facexlib/detection/retinaface_net.py)."""
    layout = {
        f"body.{key}": tuple(value.shape)
        for key, value in resnet50(weights=None).state_dict().items()
        if not key.startswith("fc.")
    }

    def conv_bn(prefix: str, cin: int, cout: int, kernel: int) -> None:
        layout[f"{prefix}.0.weight"] = (cout, cin, kernel, kernel)
        for name in ("weight", "bias", "running_mean", "running_var"):
            layout[f"{prefix}.1.{name}"] = (cout,)
        layout[f"{prefix}.1.num_batches_tracked"] = ()

    for index, cin in enumerate((512, 1024, 2048), start=1):
        conv_bn(f"fpn.output{index}", cin, 256, 1)
    conv_bn("fpn.merge1", 256, 256, 3)
    conv_bn("fpn.merge2", 256, 256, 3)
    for level in (1, 2, 3):
        conv_bn(f"ssh{level}.conv3X3", 256, 128, 3)
        conv_bn(f"ssh{level}.conv5X5_1", 256, 64, 3)
        conv_bn(f"ssh{level}.conv5X5_2", 64, 64, 3)
        conv_bn(f"ssh{level}.conv7X7_2", 64, 64, 3)
        conv_bn(f"ssh{level}.conv7x7_3", 64, 64, 3)
    for head, values in (("ClassHead", 2), ("BboxHead", 4), ("LandmarkHead", 10)):
        for level in range(3):
            layout[f"{head}.{level}.conv1x1.weight"] = (2 * values, 256, 1, 1)
            layout[f"{head}.{level}.conv1x1.bias"] = (2 * values,)
    return layout


def _random_state(layout: dict[str, tuple[int, ...]], prefix: str = "") -> dict:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            state[prefix + key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[prefix + key] = torch.ones(shape)
        else:
            state[prefix + key] = torch.randn(shape, generator=generator) * 0.02
    return state


def test_retinaface_r50_loads_facexlibs_layout_strictly_and_gives_boxes(tmp_path: Path) -> None:
    layout = _facexlib_r50_layout()
    own = {key: tuple(value.shape) for key, value in load_r50(None).net.state_dict().items()}
    assert own == layout
    path = tmp_path / R50_FILE  # saved from DataParallel: every key under "module."
    torch.save(_random_state(layout, "module."), path)
    detector = load_r50({R50_FILE: path})
    x = torch.rand(1, 3, 96, 160) * 255
    prediction = detector.dense(x)
    cells = sum(2 * -(-96 // s) * -(-160 // s) for s in (8, 16, 32))
    assert prediction.scores.shape == (1, cells) and prediction.boxes.shape == (1, cells, 4)
    assert list(detector.features(x)) == ["body.layer2", "body.layer3", "body.layer4"]
    assert detector.score_threshold == 0.8  # facexlib's default confidence


# -- S3FD as face_alignment lays it out ------------------------------------------------------

#: face_alignment/detection/sfd/net_s3fd.py: (name, out, in, kernel) of every convolution
_FAN_CONVS = (
    ("conv1_1", 64, 3, 3), ("conv1_2", 64, 64, 3), ("conv2_1", 128, 64, 3),
    ("conv2_2", 128, 128, 3), ("conv3_1", 256, 128, 3), ("conv3_2", 256, 256, 3),
    ("conv3_3", 256, 256, 3), ("conv4_1", 512, 256, 3), ("conv4_2", 512, 512, 3),
    ("conv4_3", 512, 512, 3), ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3),
    ("conv5_3", 512, 512, 3), ("fc6", 1024, 512, 3), ("fc7", 1024, 1024, 1),
    ("conv6_1", 256, 1024, 1), ("conv6_2", 512, 256, 3), ("conv7_1", 128, 512, 1),
    ("conv7_2", 256, 128, 3),
    ("conv3_3_norm_mbox_conf", 4, 256, 3), ("conv3_3_norm_mbox_loc", 4, 256, 3),
    ("conv4_3_norm_mbox_conf", 2, 512, 3), ("conv4_3_norm_mbox_loc", 4, 512, 3),
    ("conv5_3_norm_mbox_conf", 2, 512, 3), ("conv5_3_norm_mbox_loc", 4, 512, 3),
    ("fc7_mbox_conf", 2, 1024, 3), ("fc7_mbox_loc", 4, 1024, 3),
    ("conv6_2_mbox_conf", 2, 512, 3), ("conv6_2_mbox_loc", 4, 512, 3),
    ("conv7_2_mbox_conf", 2, 256, 3), ("conv7_2_mbox_loc", 4, 256, 3),
)  # fmt: skip


def _fan_layout() -> dict[str, tuple[int, ...]]:
    layout: dict[str, tuple[int, ...]] = {}
    for name, cout, cin, kernel in _FAN_CONVS:
        layout[f"{name}.weight"] = (cout, cin, kernel, kernel)
        layout[f"{name}.bias"] = (cout,)
    for name, channels in (("conv3_3_norm", 256), ("conv4_3_norm", 512), ("conv5_3_norm", 512)):
        layout[f"{name}.weight"] = (channels,)
    return layout


def test_s3fd_loads_face_alignments_layout_strictly_and_gives_boxes(tmp_path: Path) -> None:
    layout = _fan_layout()
    own = {key: tuple(value.shape) for key, value in load_s3fd(None).net.state_dict().items()}
    assert own == layout
    path = tmp_path / S3FD_FILE
    torch.save(_random_state(layout), path)
    detector = load_s3fd({S3FD_FILE: path})
    x = torch.rand(1, 3, 128, 192) * 255
    prediction = detector.dense(x)
    assert prediction.boxes.shape[:2] == prediction.scores.shape
    # the first level's priors: 16 px squares centred every 4 px (face_alignment's anchors)
    head = detector.shots(x)[-1]
    priors = detector.priors(x, head)
    torch.testing.assert_close(priors[:2], torch.tensor([[2.0, 2, 16, 16], [6.0, 2, 16, 16]]))
    assert head.sizes[0] == (32, 48) and head.sizes[3] == (8, 10)  # fc6's padding of 3
    # face_alignment feeds BGR minus (104, 117, 123)
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 255
    assert detector.preprocess(red)[0, :, 0, 0].tolist() == [-104.0, -117.0, 132.0]


# -- YOLOv8-face: the decode on a small graph of the same output layout ---------------------


def _yolov8_face_graph(path: Path, size: int = 64, stride: int = 8) -> None:
    """A YOLOv8-face-shaped graph: a fixed size×size input, one stride-8 map whose anchors
    each give a box (cx, cy, w, h), a Sigmoid face score and five (x, y, visibility)
    keypoints, concatenated into 1 × 20 × A as ultralytics exports it. Like an export without
    onnxsim it writes a Reshape target as a Constant node, shares a bias through an Identity,
    and flattens with ``[1, C, -1]`` (a batch there hides in the last dimension) before a
    Reshape to fixed sizes."""
    rng = np.random.default_rng(0)
    side = size // stride
    cells = side**2

    def weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.1, shape).astype(np.float32), name)

    def ints(name: str, values: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(values, np.int64), name)

    initialisers = [
        weight("stem.w", (8, 3, stride, stride)),
        weight("box.w", (4, 8, 1, 1)),
        weight("box.b", (4,)),
        weight("cls.w", (1, 8, 1, 1)),
        weight("kpt.w", (15, 8, 1, 1)),
        ints("flat.shape", [1, 8, -1]),
        ints("grid.shape", [1, 8, side, side]),
        ints("box.shape", [1, 4, cells]),
        ints("cls.shape", [1, 1, cells]),
    ]
    kpt_shape = numpy_helper.from_array(np.array([1, 15, cells], np.int64), "kpt.value")
    nodes = [
        helper.make_node("Conv", ["images", "stem.w"], ["stem.map"], strides=[stride, stride]),
        helper.make_node("Reshape", ["stem.map", "flat.shape"], ["stem.flat"]),
        helper.make_node("Reshape", ["stem.flat", "grid.shape"], ["stem"]),
        helper.make_node("Identity", ["box.b"], ["box.shared_b"]),
        helper.make_node("Conv", ["stem", "box.w", "box.shared_b"], ["box.raw"]),
        helper.make_node("Reshape", ["box.raw", "box.shape"], ["box.flat"]),
        helper.make_node("Abs", ["box.flat"], ["box"]),
        helper.make_node("Conv", ["stem", "cls.w"], ["cls.raw"]),
        helper.make_node("Reshape", ["cls.raw", "cls.shape"], ["cls.logits"]),
        helper.make_node("Sigmoid", ["cls.logits"], ["cls"]),
        helper.make_node("Conv", ["stem", "kpt.w"], ["kpt.raw"]),
        helper.make_node("Constant", [], ["kpt.shape"], value=kpt_shape),
        helper.make_node("Reshape", ["kpt.raw", "kpt.shape"], ["kpt"]),
        helper.make_node("Concat", ["box", "cls"], ["box_cls"], axis=1),
        helper.make_node("Concat", ["box_cls", "kpt"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "yolov8-face-like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 20, cells])],
        initialisers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_yolov8_face_decodes_boxes_and_log_odds_as_facefusion_does(tmp_path: Path) -> None:
    import onnxruntime

    path = tmp_path / "yoloface_8n.onnx"
    _yolov8_face_graph(path)
    detector = load_yoloface({"yoloface_8n.onnx": path})
    assert detector.net.logits_tensor == "cls.logits"  # the Sigmoid's input, found by rows
    picture = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(3)) * 255
    prediction = detector.dense(picture)
    # FaceFusion: BGR / 255 pasted at the top left of a black 64×64 canvas
    canvas = np.zeros((1, 3, 64, 64), np.float32)
    canvas[0, :, :40, :56] = picture[0].flip(0).numpy() / 255
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (rows,) = session.run(None, {"images": canvas})
    detection = rows[0].T
    torch.testing.assert_close(prediction.scores[0], torch.from_numpy(detection[:, 4]))
    centre, size = detection[:, :2], detection[:, 2:4]
    expected = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    torch.testing.assert_close(prediction.boxes[0], torch.from_numpy(expected))
    torch.testing.assert_close(prediction.logits.sigmoid(), prediction.scores)
    # a batch of two (the graph was exported at batch 1), and a picture larger than the input:
    # shrunk to fit, boxes back in its own pixels
    pair = detector.dense(torch.cat([picture, picture]))
    torch.testing.assert_close(pair.logits[1], prediction.logits[0])
    large = detector.dense(torch.nn.functional.interpolate(picture, scale_factor=4.0))
    assert large.boxes.shape == prediction.boxes.shape
    assert float(large.boxes.abs().max()) > float(prediction.boxes.abs().max())


def test_a_graph_without_a_sigmoid_score_row_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "yoloface_8n.onnx"
    _yolov8_face_graph(path)
    model = onnx.load(path)
    for node in model.graph.node:
        if node.op_type == "Sigmoid":
            node.op_type = "Relu"
    onnx.save(model, path)
    with pytest.raises(ValueError, match="YOLOv8-face"):
        load_yoloface({"yoloface_8n.onnx": path})


def test_the_tools_own_detectors_are_registered_with_their_catalogue_files() -> None:
    specs = detector_specs()
    files = {name: [f.name for f in specs[name].files] for name in
             ("scrfd_10g", "retinaface_10g", "yoloface_8n", "retinaface_r50",
              "s3fd_fan")}  # fmt: skip
    assert files == {
        "scrfd_10g": ["det_10g.onnx"],
        "retinaface_10g": ["retinaface_10g.onnx"],
        "yoloface_8n": ["yoloface_8n.onnx"],
        "retinaface_r50": ["detection_Resnet50_Final.pth"],
        "s3fd_fan": ["s3fd-619a316812.pth"],
    }
    assert all(not specs[name].shipped for name in files)
    assert all(f.size and f.sha256 and f.sources for name in files for f in specs[name].files)
