"""The tools' own detection code, run on the copies a tool gets: a check that does not go
through deepguard's own copy of the detectors.

- roop / Deep-Live-Cam: insightface's ``FaceAnalysis.prepare(ctx_id, det_size=(640, 640))``
  at 0.5 (on SCRFD-500M laid out as the ``buffalo_sc`` pack: the weights here);
- insightface >= 1.0 defaults: ``prepare()`` without ``det_size`` (128 and 640);
- LivePortrait's cropper: ``det_size=(512, 512)``, ``det_thresh=0.1``;
- FaceFusion's YuNet option: OpenCV's ``FaceDetectorYN`` on the picture fitted into 640 at
  0.5.

Each returns the boxes it finds on an RGB picture (K×4, in that picture's pixels).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

Judge = Callable[[np.ndarray], np.ndarray]


def _insightface(weights: Path, det_size, threshold: float) -> Judge:
    from insightface.app import FaceAnalysis

    root = Path(tempfile.mkdtemp(prefix="deepguard-insightface-"))
    pack = root / "models" / "buffalo_sc"
    pack.mkdir(parents=True)
    (pack / "det_500m.onnx").symlink_to((weights / "det_500m.onnx").resolve())
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every model it loads
        app = FaceAnalysis(name="buffalo_sc", root=str(root), allowed_modules=["detection"],
                           providers=["CPUExecutionProvider"])  # fmt: skip
        if det_size is None:
            app.prepare(ctx_id=-1, det_thresh=threshold)
        else:
            app.prepare(ctx_id=-1, det_size=det_size, det_thresh=threshold)

    def judge(rgb: np.ndarray) -> np.ndarray:
        faces = app.get(np.ascontiguousarray(rgb[:, :, ::-1]))  # it takes BGR
        return np.array([face.bbox for face in faces], np.float32).reshape(-1, 4)

    return judge


def _opencv_yunet(weights: Path, size: int = 640, threshold: float = 0.5) -> Judge:
    model = str(weights / "yunet_2026may.onnx")

    def judge(rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        scale = size / max(height, width)
        resized = cv2.resize(rgb, (round(width * scale), round(height * scale)))
        detector = cv2.FaceDetectorYN.create(
            model, "", (resized.shape[1], resized.shape[0]), threshold
        )
        _, found = detector.detect(np.ascontiguousarray(resized[:, :, ::-1]))
        if found is None:
            return np.zeros((0, 4), np.float32)
        boxes = found[:, :4].copy()
        boxes[:, 2:] += boxes[:, :2]  # x, y, w, h → corners
        return (boxes / scale).astype(np.float32)

    return judge


def own_code_judges(weights: Path) -> dict[str, Judge]:
    """Every own-code judge whose package and weights are here, by name."""
    judges: dict[str, Judge] = {}
    try:
        judges["insightface-640 (roop)"] = _insightface(weights, (640, 640), 0.5)
        judges["insightface-defaults"] = _insightface(weights, None, 0.5)
        judges["insightface-512@0.1 (LivePortrait)"] = _insightface(weights, (512, 512), 0.1)
    except ImportError:
        pass
    if (weights / "yunet_2026may.onnx").exists() and hasattr(cv2, "FaceDetectorYN"):
        judges["opencv-yunet-640 (FaceFusion)"] = _opencv_yunet(weights)
    return judges


def still_found(clean: np.ndarray, protected: np.ndarray, iou: float = 0.3) -> int:
    """How many clean boxes a protected box overlaps by ``iou`` (the per-face count)."""
    from deepguard.attack.verification import box_iou

    if not len(clean) or not len(protected):
        return 0
    return int((box_iou(clean, protected) >= iou).any(axis=1).sum())
