"""Tool profiles and verification: a face counts as found if any tool's look finds it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from deepguard.attack import profiles
from deepguard.attack.config import load_preset
from deepguard.attack.profiles import ToolProfile, enabled_profiles, tool_profiles
from deepguard.attack.verification import judge, plan_looks, tool_summary
from deepguard.errors import DeepguardError
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
    native_only = plan_looks(table, [], 32, 24)
    assert judge(table, native_only, [small[None]]).by_detector() == {"retinaface": [0]}
    looks = plan_looks(table, enabled_profiles(["faceswap"]), 32, 24)
    verdict = judge(table, looks, [small[None]])
    assert verdict.by_detector() == {"retinaface": [1]}
    assert verdict.by_tool() == {"faceswap": [1]}


def test_tool_summary_says_which_tools_a_result_protects_against() -> None:
    chosen = enabled_profiles(["faceswap", "faceswap-cpu", "deepfacelab", "deepfacelive"])
    rows = tool_summary(
        chosen,
        attacked={"retinaface", "yolo5face_n05"},
        before={"faceswap": [2], "faceswap-cpu": [2], "deepfacelab": [2], "deepfacelive": [0]},
        after={"faceswap": [0], "faceswap-cpu": [1], "deepfacelab": [1], "deepfacelive": [0]},
    )
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


def test_unknown_profiles_and_misplaced_budgets_are_refused() -> None:
    with pytest.raises(DeepguardError, match="unknown tool profile"):
        enabled_profiles(["no-such-tool"])
    with pytest.raises(DeepguardError, match="region_epsilon"):
        load_preset("balanced", region_epsilon={"mtcnn": 12})  # MTCNN is not attacked there
    strong = load_preset("strong")
    assert strong.max_epsilon == 12 and strong.epsilon < 12


def test_region_epsilon_raises_the_budget_only_around_that_detectors_faces(
    weights_dir: Path, media_dir: Path
) -> None:
    from deepguard.attack.core import FacePoison, frames_to_tensor

    clean = read_rgb(media_dir / "lp_s12.jpg")
    config = load_preset(
        "balanced", detectors=["retinaface"], epsilon=6, region_epsilon={"retinaface": 12},
        tools=[],
    )  # fmt: skip
    attack = FacePoison(config)
    bound = attack._budget(clean[None], frames_to_tensor(clean[None], "cpu"))
    assert float(bound.max()) == 12 and float(bound.min()) == 6
    raised = float((bound == 12).float().mean())
    assert 0.05 < raised < 0.9  # the face region, not the picture
    assert np.isclose(float(bound[0, 0, 0, 0]), 6)  # a corner keeps the base budget


def test_tools_sharing_a_look_count_faces_at_their_own_thresholds() -> None:
    """One detection pass at the lower threshold serves both; a 0.6 face is DeepFaceLab's
    (0.5) but not faceswap's (0.7)."""
    from deepguard.attack.verification import Look, Verdict
    from deepguard.models.base import Detections

    look = Look("retinaface", 1 / 3, 0.5, False, ("faceswap", "deepfacelab"), (0.7, 0.5))
    face = Detections(np.array([[0, 0, 9, 9]], np.float32), np.array([0.6], np.float32))
    verdict = Verdict.of({look: [face]})
    assert verdict.by_tool() == {"faceswap": [0], "deepfacelab": [1]}
    assert verdict.by_detector() == {"retinaface": [1]}
