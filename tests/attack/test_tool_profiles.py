"""Tool profiles and the per-face verdict: a protected face counts as found when a tool's look
finds a detection overlapping it; other detections fail nothing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from deepguard.attack import profiles
from deepguard.attack.config import load_preset
from deepguard.attack.profiles import ToolProfile, enabled_profiles, tool_profiles
from deepguard.attack.tool_report import tallies_of_counts, tool_summary
from deepguard.attack.verification import (
    Face,
    Look,
    Verdict,
    detect_looks,
    plan_looks,
    protected_faces,
)
from deepguard.errors import DeepguardError
from deepguard.models.base import Detections
from deepguard.models.registry import get_spec, load_detector
from deepguard.settings import get_settings
from tests.conftest import read_rgb


def test_every_built_in_profile_names_registered_detectors() -> None:
    for profile in tool_profiles().values():
        for name in profile.detectors:
            get_spec(name)  # raises for an unknown detector
        assert profile.title and profile.runs


def test_scales_follow_each_tools_resize() -> None:
    fit = ToolProfile(name="t", title="t", detectors=("retinaface",), resize="longest",
                      sizes=(128, 640))  # fmt: skip
    assert fit.scales(1080, 1920) == [128 / 1920, 640 / 1920]
    assert fit.scales(400, 320) == [128 / 400, 640 / 400]  # small pictures are enlarged
    halve = ToolProfile(name="h", title="h", detectors=("retinaface",), resize="halve",
                        sizes=(640,))  # fmt: skip
    assert halve.scales(1080, 1920) == [640 / 1920]  # DeepFaceLab: 640 from 1280 up
    assert halve.scales(720, 1000) == [0.5]  # else half size
    assert ToolProfile(name="n", title="n", detectors=("yunet",)).scales(99, 77) == [1.0]
    with pytest.raises(ValueError):
        ToolProfile(name="x", title="x", detectors=("yunet",), resize="longest")


def test_looks_at_one_scale_merge_at_the_lowest_threshold(weights_dir: Path) -> None:
    retinaface = load_detector("retinaface")
    looks = plan_looks(
        {"retinaface": retinaface},
        enabled_profiles(["faceswap", "deepfacelab", "wav2lip"]),
        1080,
        1920,
    )
    by_scale = {round(look.scale, 4): look for look in looks}
    assert set(by_scale) == {1.0, round(640 / 1920, 4)}
    native = by_scale[1.0]  # retinaface's own look and Wav2Lip's (0.5) are one
    assert native.native and native.threshold == 0.5 and native.tools == ("wav2lip",)
    # Wav2Lip runs the detector on the whole frame: the attack shows it the whole frame too,
    # not the crops around the faces that a native look alone gets
    assert not native.crops
    (alone,) = plan_looks({"retinaface": retinaface}, [], 1080, 1920)
    assert alone.native and alone.crops
    shrunk = by_scale[round(640 / 1920, 4)]  # faceswap (0.7) and DeepFaceLab (0.5) share it
    assert not shrunk.native and shrunk.threshold == 0.5
    # one pass for both, but each counts faces at its own threshold
    assert dict(zip(shrunk.tools, shrunk.tool_thresholds, strict=True)) == {
        "faceswap": 0.7,
        "deepfacelab": 0.5,
    }


def test_a_face_missed_at_native_size_but_found_after_the_tools_resize_counts(
    weights_dir: Path, media_dir: Path
) -> None:
    """A 32-pixel portrait: RetinaFace misses the face as it is, faceswap enlarges the picture
    to 640 first and finds it. The verdict is "found", for the detector and for the tool."""
    clean = read_rgb(media_dir / "lp_s12.jpg")
    small = cv2.resize(clean, (24, 32), interpolation=cv2.INTER_AREA)
    retinaface = load_detector("retinaface")
    table = {"retinaface": retinaface}
    native_only = detect_looks(table, plan_looks(table, [], 32, 24), small[None])
    assert protected_faces(native_only, 1) == [[]]
    found = detect_looks(table, plan_looks(table, enabled_profiles(["faceswap"]), 32, 24),
                         small[None])  # fmt: skip
    faces = protected_faces(found, 1)
    verdict = Verdict(faces, {"saved": found})
    assert len(faces[0]) == 1
    assert verdict.by_detector() == {"retinaface": [1]}
    assert verdict.by_tool() == {"faceswap": [1]}


def test_tool_summary_says_which_tools_a_result_protects_against() -> None:
    chosen = enabled_profiles(["faceswap", "faceswap-cpu", "deepfacelab", "deepfacelive"])
    tallies = tallies_of_counts(
        {"faceswap": [2], "faceswap-cpu": [2], "deepfacelab": [2], "deepfacelive": [0]},
        {"faceswap": [0], "faceswap-cpu": [1], "deepfacelab": [1], "deepfacelive": [0]},
        "saved",
    )
    rows = tool_summary(chosen, {"retinaface", "yolo5face_n05"}, tallies)
    status = {row["tool"]: row["status"] for row in rows}
    assert status == {
        "faceswap": "protected",
        "faceswap-cpu": "not covered",  # MTCNN is not attacked
        "deepfacelab": "not protected",
        "deepfacelive": "no faces found",
    }
    stand_in = {row["tool"]: row["stand_in"] for row in rows}
    assert "S3FD" in stand_in["deepfacelab"]


def test_operators_add_and_replace_profiles(tmp_path: Path, monkeypatch) -> None:
    extra = tmp_path / "tools.yaml"
    extra.write_text(
        "tools:\n"
        "  faceswap: {title: faceswap at 480, detectors: [retinaface], resize: longest,"
        " sizes: [480], threshold: 0.6}\n"
        "  in-house: {title: In-house swapper, detectors: [yunet], threshold: 0.3}\n"
    )
    monkeypatch.setenv("DEEPGUARD_TOOLS_FILE", str(extra))
    get_settings.cache_clear()
    try:
        table = tool_profiles()
        assert table["faceswap"].sizes == (480,) and table["faceswap"].threshold == 0.6
        assert table["in-house"].scales(100, 200) == [1.0]
        assert "roop" in table  # the built-in ones stay
        extra.write_text("tools:\n  broken: {title: b, detectors: []}\n")
        profiles._profiles_from.cache_clear()
        with pytest.raises(DeepguardError, match="broken"):
            tool_profiles()
    finally:
        get_settings.cache_clear()
        profiles._profiles_from.cache_clear()


def test_unknown_profiles_are_refused() -> None:
    with pytest.raises(DeepguardError, match="unknown tool profile"):
        enabled_profiles(["no-such-tool"])


def _face(x1: float, y1: float, x2: float, y2: float) -> Face:
    return Face(np.array([[x1, y1, x2, y2]], np.float32))


def _found(*boxes_and_scores: tuple[list[float], float]) -> Detections:
    boxes = np.array([b for b, _ in boxes_and_scores], np.float32).reshape(-1, 4)
    return Detections(boxes, np.array([s for _, s in boxes_and_scores], np.float32))


def test_tools_sharing_a_look_count_faces_at_their_own_thresholds() -> None:
    """One detection pass at the lower threshold serves both; a 0.6 face is DeepFaceLab's
    (0.5) but not faceswap's (0.7)."""
    look = Look("retinaface", 1 / 3, 0.5, False, ("faceswap", "deepfacelab"), (0.7, 0.5))
    verdict = Verdict([[_face(0, 0, 9, 9)]], {"saved": {look: [_found(([0, 0, 9, 9], 0.6))]}})
    assert verdict.by_tool() == {"faceswap": [0], "deepfacelab": [1]}
    assert verdict.by_detector() == {"retinaface": [1]}


def test_a_stray_detection_fails_nothing_and_a_shifted_one_on_the_face_fails_it() -> None:
    """LivePortrait's 0.1 fires on a shirt or a poster: counted, not judged. A detection
    that overlaps a protected face (IoU >= 0.3) finds it, also when it is shifted."""
    look = Look("scrfd_500m", 0.8, 0.1, False, ("liveportrait",), (0.1,))
    faces = [[_face(100, 100, 200, 220)]]
    stray = _found(([400, 300, 480, 380], 0.4))
    verdict = Verdict(faces, {"sns": {look: [stray]}})
    (finding,) = verdict.tool("liveportrait")
    assert finding.faces == set() and finding.others == 1
    assert verdict.hides_from(["liveportrait"])
    shifted = _found(([130, 120, 230, 240], 0.2))  # IoU with the face: 0.41
    verdict = Verdict(faces, {"sns": {look: [shifted]}})
    assert verdict.tool("liveportrait")[0].faces == {0}
    assert not verdict.hides_from(["liveportrait"])
    assert verdict.found_pairs(["liveportrait"]) == {("liveportrait", "sns", 0, 0)}
    beside = _found(([150, 150, 250, 270], 0.2))  # IoU 0.17: something beside the face
    assert Verdict(faces, {"sns": {look: [beside]}}).hides_from(["liveportrait"])


def test_the_faces_to_protect_are_the_clean_pictures_faces_at_half_a_chance_or_more() -> None:
    """A 0.1 look's weak clean detection is no face to protect; a 0.5 look's is. Boxes of
    several looks around one face are one face, and a face no look found is not counted."""
    weak = Look("scrfd_500m", 0.8, 0.1, False, ("liveportrait",), (0.1,))
    strong = Look("retinaface", 1.0, 0.5, True)
    found = {
        weak: [_found(([10, 10, 60, 70], 0.9), ([300, 300, 340, 350], 0.3))],
        strong: [_found(([12, 8, 62, 66], 0.99))],
    }
    (faces,) = protected_faces(found, 1)
    assert len(faces) == 1 and len(faces[0].boxes) == 2
    tracker = [np.array([[500, 50, 560, 120]], np.float32)]
    assert len(protected_faces(found, 1, tracker)[0]) == 2
    # a detection after the attack on a region no clean look found is "other"
    look = Look("retinaface", 1.0, 0.5, True)
    after = Verdict([faces], {"saved": {look: [_found(([300, 300, 340, 350], 0.9))]}})
    assert after.by_detector() == {"retinaface": [0]}
    assert after.look(look, "saved")[0].others == 1


def test_roop_looks_once_at_640_and_insightface_defaults_twice() -> None:
    """roop, Deep-Live-Cam and ReActor pin insightface 0.7.3 with det_size=(640, 640); only
    insightface >= 1.0 without det_size adds a 128 look, and only `strong` judges that."""
    table = tool_profiles()
    assert table["roop"].scales(1024, 1536) == [640 / 1536]
    assert table["insightface-defaults"].scales(1024, 1536) == [128 / 1536, 640 / 1536]
    assert not table["insightface-defaults"].enabled
    balanced = {p.name for p in enabled_profiles(load_preset("balanced").tools)}
    strong = load_preset("strong")
    assert "insightface-defaults" not in balanced
    assert "insightface-defaults" in {p.name for p in enabled_profiles(None, strong.extra_tools)}


def test_the_texture_budget_lowers_epsilon_on_flat_pixels_and_never_raises_it(
    weights_dir: Path, media_dir: Path
) -> None:
    from deepguard.attack.core import FacePoison
    from deepguard.attack.regions import Window

    clean = read_rgb(media_dir / "lp_s12.jpg")
    config = load_preset("balanced", detectors=["retinaface"], epsilon=8, tools=[])
    assert config.texture_budget > 0
    attack = FacePoison(config)
    faces, _ = attack.faces_of(clean[None])
    whole = [Window(0, 0, 0, clean.shape[1], clean.shape[0])]
    bound = attack._budgets(clean[None], faces, whole).bound()
    first = config.rungs[0].level
    assert float(bound.max()) <= first and float(bound.min()) >= 0.4 * first - 1e-4
    assert float((bound < first).float().mean()) > 0.1  # flat pixels get less
