"""SCRFD-500M: parity with the real insightface package, native size, batches, graph layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torchvision.ops import box_iou

from deepguard.models.base import image_to_tensor
from deepguard.models.onnx import OnnxModule
from deepguard.models.scrfd.predictor import WEIGHT_FILE, SCRFDDetector, load
from tests.conftest import read_rgb, weight_file

DET_SIZE = 640
#: (folder fixture, photo, faces insightface finds at 640×640)
PARITY_PHOTOS = [
    ("media_dir", "lp_s0.jpg", 1),
    ("media_dir", "fdlite_group.jpg", 8),
    ("press_dir", "group_five_office.jpg", 5),
    ("press_dir", "outdoor_kids_two.jpg", 2),
]


@pytest.fixture(scope="module")
def scrfd(weights_dir: Path) -> SCRFDDetector:
    return load({WEIGHT_FILE: weight_file(weights_dir, WEIGHT_FILE)})


@pytest.fixture(scope="module")
def insightface_detector(weights_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """insightface's own FaceAnalysis on det_500m.onnx laid out as the ``buffalo_sc`` pack.

    With the pack folder present nothing is downloaded, and FaceAnalysis asks for no licence
    acceptance (without a MODEL.LICENSE file insightface assumes its non-commercial terms).
    """
    from insightface.app import FaceAnalysis

    root = tmp_path_factory.mktemp("insightface")
    pack = root / "models" / "buffalo_sc"
    pack.mkdir(parents=True)
    (pack / WEIGHT_FILE).symlink_to(weight_file(weights_dir, WEIGHT_FILE))
    app = FaceAnalysis(
        name="buffalo_sc",
        root=str(root),
        allowed_modules=["detection"],
        providers=["CPUExecutionProvider"],
    )
    app.prepare(ctx_id=-1, det_size=(DET_SIZE, DET_SIZE))
    return app


def letterbox(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The image as insightface's detector sees it: resized into 640×640, black bottom/right."""
    height, width = rgb.shape[:2]
    if height / width > 1:
        new_height, new_width = DET_SIZE, int(DET_SIZE / (height / width))
    else:
        new_width, new_height = DET_SIZE, int(DET_SIZE * (height / width))
    canvas = np.zeros((DET_SIZE, DET_SIZE, 3), np.uint8)
    canvas[:new_height, :new_width] = cv2.resize(rgb, (new_width, new_height))
    return canvas, new_height / height


@pytest.mark.parametrize(("folder", "photo", "faces"), PARITY_PHOTOS)
def test_matches_insightface(
    scrfd: SCRFDDetector,
    insightface_detector,
    request: pytest.FixtureRequest,
    folder: str,
    photo: str,
    faces: int,
) -> None:
    rgb = read_rgb(request.getfixturevalue(folder) / photo)
    reference = insightface_detector.get(np.ascontiguousarray(rgb[:, :, ::-1]))  # it takes BGR
    assert len(reference) == faces
    canvas, scale = letterbox(rgb)
    ours = scrfd.detect(canvas)
    assert len(ours) == len(reference)  # and so no extra faces
    ref_boxes = torch.tensor(np.stack([face.bbox for face in reference]), dtype=torch.float32)
    iou = box_iou(ref_boxes, torch.from_numpy(ours.boxes / scale))
    best_iou, match = iou.max(dim=1)
    assert best_iou.min() >= 0.95
    assert len(set(match.tolist())) == len(reference)
    ref_scores = np.array([face.det_score for face in reference])
    assert np.abs(ours.scores[match.numpy()] - ref_scores).max() <= 0.01


def test_finds_faces_at_native_size(scrfd: SCRFDDetector, media_dir: Path) -> None:
    found = scrfd.detect(read_rgb(media_dir / "lp_s0.jpg"))  # 600×704, padded to 608×704
    assert len(found) == 1
    x1, y1, x2, y2 = found.boxes[0]
    # the portrait's face, where YuNet and OpenCV find it too
    assert 255 < x1 < 295 and 50 < y1 < 90 and 345 < x2 < 385 and 170 < y2 < 210
    assert len(scrfd.detect(read_rgb(media_dir / "fdlite_group.jpg"))) >= 6


def test_batch_of_two_equals_two_single_runs(scrfd: SCRFDDetector, media_dir: Path) -> None:
    """The graph's heads put the batch behind rows and columns; images must not mix."""
    images = [
        cv2.resize(read_rgb(media_dir / name), (320, 256))
        for name in ("fdlite_group.jpg", "lp_s0.jpg")
    ]
    x = torch.cat([image_to_tensor(image) for image in images])
    with torch.no_grad():
        both = scrfd.dense(x)
        singles = [scrfd.dense(x[i : i + 1]) for i in range(2)]
    assert both.scores.shape == (2, 2 * sum((256 // s) * (320 // s) for s in (8, 16, 32)))
    close = {"atol": 1e-4, "rtol": 1e-4}  # batched convolutions sum in another order
    torch.testing.assert_close(both.logits, torch.cat([s.logits for s in singles]), **close)
    torch.testing.assert_close(both.boxes, torch.cat([s.boxes for s in singles]), **close)


def test_scores_are_the_graph_outputs_laid_out_per_image(
    scrfd: SCRFDDetector, weights_dir: Path
) -> None:
    """At batch 1 the graph's own Sigmoid outputs, in insightface's order, are our scores."""
    graph = OnnxModule(onnx.load(weight_file(weights_dir, WEIGHT_FILE)))
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        outputs = list(graph(scrfd.preprocess(x)).values())
        dense = scrfd.dense(x)
    probabilities = torch.cat([out[:, 0] for out in outputs[:3]])
    torch.testing.assert_close(dense.scores[0], probabilities)
    assert dense.boxes.shape == (1, len(probabilities), 4)


def test_features_are_backbone_strides_8_16_32(scrfd: SCRFDDetector) -> None:
    with torch.no_grad():
        features = scrfd.features(torch.rand(1, 3, 96, 64) * 255)
    assert list(features) == ["backbone.stride8", "backbone.stride16", "backbone.stride32"]
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(12, 8), (6, 4), (3, 2)]


def test_load_needs_the_onnx_graph() -> None:
    with pytest.raises(ValueError, match=WEIGHT_FILE):
        load(None)


def test_insightface_finds_the_face_before_protection_and_none_after(
    insightface_detector, media_dir: Path, tmp_path: Path
) -> None:
    """The real client: insightface's own FaceAnalysis (what roop, Deep-Live-Cam and
    inswapper call, at 640×640), on the JPEG file deepguard writes."""
    from deepguard.attack.config import load_preset
    from deepguard.pipeline.protect import Protector

    source, out = media_dir / "lp_s12.jpg", tmp_path / "protected.jpg"
    config = load_preset("balanced", detectors=["scrfd_500m"], tools=["inswapper"])
    report = Protector(config).protect(source, out)
    assert {row["tool"]: row["status"] for row in report["tools"]} == {"inswapper": "protected"}
    clean = read_rgb(source)
    assert len(insightface_detector.get(np.ascontiguousarray(clean[:, :, ::-1]))) == 1
    delivered = cv2.imread(str(out))  # BGR, as the tools read it
    assert insightface_detector.get(delivered) == []
    recompressed = cv2.imdecode(
        cv2.imencode(".jpg", delivered, [cv2.IMWRITE_JPEG_QUALITY, 75])[1], 1
    )
    assert insightface_detector.get(recompressed) == []


def _renamed(model: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    """A copy of ``model`` whose every tensor, node and initialiser carries another name."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    for node in graph.node:
        node.name = prefix + node.name
        node.input[:] = [prefix + name if name else name for name in node.input]
        node.output[:] = [prefix + name for name in node.output]
    for collection in (graph.initializer, graph.input, graph.output, graph.value_info):
        for item in collection:
            item.name = prefix + item.name
    return copy


def test_another_scrfd_graph_is_read_by_its_structure_not_its_tensor_names(
    scrfd: SCRFDDetector, weights_dir: Path, tmp_path: Path
) -> None:
    """Another SCRFD export (det_10g.onnx, FaceFusion's re-exports) names its tensors its own
    way: the backbone outputs are the tensors the neck's lateral convolutions read."""
    model = onnx.load(weight_file(weights_dir, WEIGHT_FILE))
    path = tmp_path / "det_10g.onnx"
    onnx.save(_renamed(model, "other/"), path)
    other = load({"det_10g.onnx": path}, file="det_10g.onnx", name="scrfd_10g")
    assert other.name == "scrfd_10g"
    assert other.net.feature_tensors == {
        name: "other/" + tensor for name, tensor in scrfd.net.feature_tensors.items()
    }
    assert list(scrfd.net.feature_tensors.values()) == ["324", "336", "372"]
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        torch.testing.assert_close(other.dense(x).logits, scrfd.dense(x).logits)
        for mine, theirs in zip(other.features(x).values(), scrfd.features(x).values(),
                                strict=True):  # fmt: skip
            torch.testing.assert_close(mine, theirs)


def test_a_graph_fed_bgr_sees_the_channels_swapped(scrfd: SCRFDDetector, weights_dir: Path) -> None:
    """FaceFusion feeds its retinaface_10g.onnx (an SCRFD-10G re-export) BGR pixels as they are."""
    path = weight_file(weights_dir, WEIGHT_FILE)
    bgr = load({WEIGHT_FILE: path}, name="retinaface_10g", channels="bgr")
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        torch.testing.assert_close(bgr.dense(x).logits, scrfd.dense(x.flip(1)).logits)
    with pytest.raises(ValueError, match="channels"):
        load({WEIGHT_FILE: path}, channels="gray")


def test_a_graph_without_a_feature_pyramid_is_refused(weights_dir: Path) -> None:
    from deepguard.models.scrfd.net import neck_inputs

    model = onnx.load(weight_file(weights_dir, WEIGHT_FILE))
    for node in model.graph.node:  # no upsampling: no top-down path to read the levels from
        if node.op_type == "Resize":
            node.op_type = "Identity"
            del node.input[1:]
    with pytest.raises(ValueError, match="backbone levels"):
        neck_inputs(model)
