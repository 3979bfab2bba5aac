"""Single-image protection end to end: real detectors, real images, real files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepguard.attack.config import load_preset
from deepguard.attack.core import FacePoison
from deepguard.attack.profiles import enabled_profiles
from deepguard.attack.verification import Face, Verdict
from deepguard.cli import _tool_verdict, main
from deepguard.pipeline.protect import ProtectOptions, Protector

#: a cheap attack for I/O tests: the point there is the file handling, not the hiding
QUICK = {"detectors": ["yunet"], "iterations": 2, "repair_rounds": 0, "shrink_steps": 0}


@pytest.fixture(scope="module")
def quick() -> Protector:
    return Protector(load_preset("balanced", **QUICK))


@pytest.fixture
def portrait(media_dir: Path) -> Image.Image:
    """lp_s0, halved: a real face, small enough to keep tests fast."""
    image = Image.open(media_dir / "lp_s0.jpg").convert("RGB")
    return image.resize((image.width // 2, image.height // 2))


@pytest.mark.parametrize("name", ["lp_s0.jpg", "lp_s42.jpg"])
def test_hides_faces_from_the_ensemble(name: str, media_dir: Path, tmp_path: Path) -> None:
    """RetinaFace judged as faceswap (640) and Wav2Lip (native) run it, YuNet natively (no
    covered tool runs it), on the saved file and on a social network's copy."""
    config = load_preset("balanced", detectors=["retinaface", "yunet"], tools=["faceswap",
                         "wav2lip"], iterations=10)  # fmt: skip
    out = tmp_path / "out.png"
    report = Protector(config).protect(media_dir / name, out)
    for verdict in report["detectors"].values():
        assert verdict["faces_before"] >= 1
        assert verdict["faces_after"] == 0
    assert report["hidden"] and report["protected"] and report["psnr_db"] > 30


@pytest.mark.parametrize("climb", [False, True])
def test_epsilon_is_never_exceeded_in_the_file(
    climb: bool, quick: Protector, portrait: Image.Image, tmp_path: Path
) -> None:
    """The cap holds on the written file's pixels, also for a face that climbed the whole
    ε ladder (here from 2 levels, in four repair rounds, to a cap of 10 with the texture
    floor lifted)."""
    protector = quick
    if climb:
        config = quick.config.with_overrides(epsilon=10, epsilon_start=2, repair_rounds=5)
        protector = Protector(config)
    source = tmp_path / "in.png"
    portrait.save(source)
    out = tmp_path / "out.png"
    report = protector.protect(source, out)
    change = np.abs(
        np.asarray(Image.open(out), np.int16) - np.asarray(Image.open(source), np.int16)
    )
    assert change.max() <= protector.config.epsilon
    assert change.max() > 0
    if climb:
        (face,) = report["faces"]
        assert face["epsilon"] > 2 and 2 < face["linf"] <= change.max()


def test_same_seed_same_bytes(quick: Protector, portrait: Image.Image, tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    portrait.save(source)
    quick.protect(source, tmp_path / "a.png")
    quick.protect(source, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_exif_orientation_is_applied(
    quick: Protector, portrait: Image.Image, tmp_path: Path
) -> None:
    # store the portrait lying on its side, with the EXIF tag that says "rotate to view"
    sideways = portrait.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    source = tmp_path / "in.jpg"
    sideways.save(source, quality=95, exif=exif.tobytes())
    out = tmp_path / "out.jpg"
    report = quick.protect(source, out)
    assert Image.open(out).size == portrait.size  # upright, as a viewer shows it
    assert report["detectors"]["yunet"]["faces_before"] == 1  # the face was seen upright
    assert 0x0112 not in Image.open(out).getexif()


def test_alpha_is_preserved(quick: Protector, portrait: Image.Image, tmp_path: Path) -> None:
    alpha = np.zeros((portrait.height, portrait.width), np.uint8)
    alpha[:, : portrait.width // 2] = 255
    alpha[10:20] = 77
    source = tmp_path / "in.png"
    Image.fromarray(np.dstack([np.asarray(portrait), alpha]), "RGBA").save(source)
    out = tmp_path / "out.png"
    quick.protect(source, out)
    result = Image.open(out)
    assert result.mode == "RGBA"
    assert np.array_equal(np.asarray(result)[:, :, 3], alpha)


def _gps_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Camera Maker"
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    return exif.tobytes()


def test_metadata_is_stripped_by_default(
    quick: Protector, portrait: Image.Image, tmp_path: Path
) -> None:
    source = tmp_path / "in.jpg"
    portrait.save(source, quality=95, exif=_gps_exif())
    assert Image.open(source).getexif().get_ifd(0x8825)
    quick.protect(source, tmp_path / "stripped.jpg")
    assert not Image.open(tmp_path / "stripped.jpg").getexif()
    quick.protect(source, tmp_path / "kept.jpg", ProtectOptions(keep_metadata=True))
    kept = Image.open(tmp_path / "kept.jpg").getexif()
    assert kept.get_ifd(0x8825)[1] == "N"


def _sixteen_bit_png(path: Path) -> None:
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(path)


def _cmyk_jpeg(path: Path) -> None:
    Image.new("CMYK", (32, 32), (10, 20, 30, 0)).save(path)


def _not_an_image(path: Path) -> None:
    path.write_text("this is a press release, not a photo")


def _truncated_jpeg(path: Path, media_dir: Path) -> None:
    data = (media_dir / "lp_s0.jpg").read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("deep.png", _sixteen_bit_png, "16-bit"),
        ("print.jpg", _cmyk_jpeg, "CMYK"),
        ("notes.jpg", _not_an_image, "not a readable image"),
        ("cut.jpg", _truncated_jpeg, "truncated"),
    ],
)
def test_refused_inputs_give_one_clear_line_and_no_output(
    name: str,
    make,
    message: str,
    tmp_path: Path,
    media_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / name
    if make is _truncated_jpeg:
        make(source, media_dir)
    else:
        make(source)
    out = tmp_path / "out" / name
    code = main(["protect", str(source), "-o", str(out), "-q", "--detectors", "yunet"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert message in error and "\n" not in error and "Traceback" not in error
    assert not out.exists() and not any(tmp_path.glob("out/*"))


def test_decompression_bomb_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepguard.settings import get_settings

    source = tmp_path / "huge.png"
    Image.new("RGB", (400, 300)).save(source)
    monkeypatch.setenv("DEEPGUARD_MAX_IMAGE_PIXELS", "100000")
    get_settings.cache_clear()
    try:
        code = main(["protect", str(source), "-q", "--detectors", "yunet"])
    finally:
        get_settings.cache_clear()
    assert code == 2
    assert "exceeds the limit" in capsys.readouterr().err


def test_cli_folder_mode_writes_predictable_names_and_reports(
    portrait: Image.Image, tmp_path: Path
) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    portrait.save(inbox / "a.jpg", quality=95)
    portrait.save(inbox / "b.png")
    args = ["protect", str(inbox), "-o", str(tmp_path / "out"), "--report", str(tmp_path / "r")]
    args += ["-q", "--detectors", "yunet", "--iterations", "2"]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jpg", "b.png"]
    report = json.loads((tmp_path / "r" / "a.json").read_text())
    for key in ("parameters", "weights", "detectors", "psnr_db", "ssim", "timings_s"):
        assert key in report
    assert report["weights"]["yunet_2026may.onnx"]


def _judged(attack: FacePoison, frames: np.ndarray, faces: list) -> Verdict:
    """Every look of the ensemble and of the detectors outside it, on every chain."""
    return attack.judge(frames, faces).merge(attack.judge_uncovered(frames, faces))


def test_report_says_which_tools_the_file_is_protected_against(
    portrait: Image.Image, tmp_path: Path
) -> None:
    config = load_preset("balanced", detectors=["retinaface", "yunet"], iterations=2,
                         repair_rounds=0, shrink_steps=0)  # fmt: skip
    source, out = tmp_path / "in.png", tmp_path / "out.jpg"
    portrait.save(source)
    report = Protector(config).protect(source, out)
    rows = {row["tool"]: row for row in report["tools"]}
    assert list(rows) == [profile.name for profile in enabled_profiles()]
    assert report["delivery"] == ["saved", "sns"] and report["faces"]

    # judged again here, on the clean picture and on the file read back from disk, through
    # the same chains (the saved file, and a social network's copy of it)
    attack = FacePoison(config)
    faces = [[Face(np.array(face["boxes"], np.float32)) for face in report["faces"]]]
    saved = np.asarray(Image.open(out).convert("RGB"))[None]
    before = _judged(attack, np.asarray(portrait)[None], faces)
    after = _judged(attack, saved, faces)
    for name, row in rows.items():
        covered = set(row["detectors"]) <= {"retinaface", "yunet"}
        assert row["covered"] == covered, name
        if name not in before.tools():  # none of its detectors could be loaded (SCRFD, say)
            assert row["faces_before"] is row["faces_after"] is None and not covered
            continue
        for chain in ("saved", "sns"):
            tally = row["deliveries"][chain]
            expected = (sum(before.by_tool(chain)[name]), sum(after.by_tool(chain)[name]))
            assert (tally["faces_before"], tally["faces_after"]) == expected, (name, chain)
        if not covered:
            expected_status = "not covered"
        elif row["faces_before"] == 0:
            expected_status = "no faces found"
        else:
            expected_status = "protected" if row["faces_after"] == 0 else "not protected"
        assert row["status"] == expected_status, name
    # RetinaFace alone stands for these tools; YOLO5Face (DeepFaceLive) was not attacked
    assert {rows[n]["status"] for n in ("faceswap", "deepfacelab", "wav2lip")} <= {
        "protected", "not protected"}  # fmt: skip
    assert rows["deepfacelive"]["status"] == "not covered"
    assert rows["deepfacelive"]["faces_before"] >= 1  # counted, though not attacked
    assert rows["faceswap"]["stand_in"] and "RetinaFace" in rows["faceswap"]["stand_in"]
    # per face: the rung it ended on, the largest change written on it, its crop's quality,
    # and per delivery the covered tools that still find it and the others
    covered = {name for name, row in rows.items() if row["covered"]}
    for index, face in enumerate(report["faces"]):
        assert face["epsilon"] in {rung.level for rung in config.rungs}
        assert 0 < face["linf"] <= face["epsilon"]  # the perturbation, before the JPEG
        assert face["psnr_db"] > 25 and 0 < face["ssim"] <= 1
        for chain in ("saved", "sns"):
            entry = face["deliveries"][chain]
            assert set(entry["protected_against"]) | set(entry["found_by"]) == covered
            found = {n for n in covered if index in rows[n]["deliveries"][chain]["faces_found"][0]}
            assert set(entry["found_by"]) == found
    assert report["epsilon"]["max"] == max(face["epsilon"] for face in report["faces"])


def test_cli_summary_lists_the_tools(
    portrait: Image.Image, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jpg"
    portrait.save(source, quality=95)
    args = ["protect", str(source), "-o", str(tmp_path / "out.jpg"), "--detectors", "yunet"]
    assert main([*args, "--iterations", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'out.jpg'}: 1 face (judged on: saved, sns); yunet 1→")
    # YuNet alone is the whole of no tool's detectors: nothing is covered
    assert "; not covered: roop, Deep-Live-Cam, " in line and "faceswap (CPU)" in line
    assert "protected against" not in line and "; PSNR " in line
    # the ε the face got: the first rung (6), or the one it climbed to
    assert re.search(r"; ε (6|8|10|12)(–\d+)?; PSNR ", line), line
    blank = tmp_path / "blank.png"  # nothing to find: -q is checked without a second attack
    Image.new("RGB", (64, 64), (128, 128, 128)).save(blank)
    assert main(["protect", str(blank), "--detectors", "yunet", "-q"]) == 0
    assert capsys.readouterr().out == ""  # -q stays quiet


def test_tool_summary_names_counts_only_where_protection_failed() -> None:
    rows = [
        {"title": "roop", "status": "protected", "faces_before": 1, "faces_after": 0},
        {"title": "DeepFaceLab", "status": "not protected", "faces_before": 1, "faces_after": 1},
        {"title": "Wav2Lip", "status": "protected", "faces_before": 2, "faces_after": 0},
        {"title": "faceswap (CPU)", "status": "not covered", "faces_before": 1,
         "faces_after": 1},
        {"title": "SimSwap", "status": "not covered", "faces_before": None, "faces_after": None},
        {"title": "LatentSync", "status": "no faces found", "faces_before": 0, "faces_after": 0},
    ]  # fmt: skip
    assert _tool_verdict(rows) == (
        "protected against: roop, Wav2Lip; not protected: DeepFaceLab (1→1); "
        "not covered: faceswap (CPU), SimSwap; no faces found by: LatentSync"
    )
    assert _tool_verdict([]) == ""
    per_delivery = {
        "title": "LivePortrait", "status": "not protected", "faces_before": 2, "faces_after": 1,
        "deliveries": {
            "saved": {"faces_before": 2, "faces_after": 0, "faces_found": [[]],
                      "other_detections": 4},
            "sns": {"faces_before": 2, "faces_after": 1, "faces_found": [[1]],
                    "other_detections": 9},
        },
    }  # fmt: skip
    assert _tool_verdict([per_delivery]) == "not protected: LivePortrait (sns 2→1, face 2)"
    # which tools were judged on their own detector files, which on stand-ins
    own = [{**rows[0], "weights": "own weights"}, {**rows[2], "weights": "stand-in: retinaface"},
           {**rows[3], "weights": "stand-in: mtcnn"}]  # fmt: skip
    assert _tool_verdict(own).endswith(
        "; judged on their own detectors: roop; the rest on stand-ins"
    )
    assert _tool_verdict(own[1:]).endswith("; judged on stand-ins")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="not met yet (issue 23, point 3): on this 600 px group photo the saved file hides "
    "76-78 % of face-tool pairs, a 0.9x copy 57-64 % and a 1080 px one 67-71 % (2026-12-05, "
    "four seeds and jitter settings); on a 600 px picture both delta sizes are native, and an "
    "area downscale averages that grid away",
)
@pytest.mark.parametrize("preset", ["balanced"])
def test_protection_survives_the_resizes_a_platform_or_viewer_makes(
    preset: str, media_dir: Path, tmp_path: Path
) -> None:
    """A protected photo resized to 0.9×, and to 1080 and 2048 pixels on the long side, each
    with area averaging and with bilinear, keeps its per-face hide rate (over every covered
    tool) within 5 points of the saved file's: the perturbation does not live on one
    sampling grid."""
    import cv2

    from deepguard.attack.verification import detect_looks

    source, out = media_dir / "fdlite_group.jpg", tmp_path / "out.jpg"
    report = Protector(load_preset(preset)).protect(source, out)
    attack = FacePoison(load_preset(preset))
    faces = [[Face(np.array(face["boxes"], np.float32)) for face in report["faces"]]]
    clean = np.asarray(Image.open(source).convert("RGB"))
    saved = np.asarray(Image.open(out).convert("RGB"))
    tools = attack.covered_tools()

    def hide_rate(transform) -> float:
        copies = [transform(picture) for picture in (clean, saved)]
        scale = copies[0].shape[1] / clean.shape[1]
        looks = attack.looks(*copies[0].shape[:2])
        before, after = (
            Verdict(faces, {"copy": detect_looks(attack.table, looks, c[None], 1.0, scale)})
            for c in copies
        )
        found = [len(b.faces) for t in tools for b in before.tool(t)]
        kept = [
            len(b.faces & a.faces)
            for t in tools
            for b, a in zip(before.tool(t), after.tool(t), strict=True)
        ]
        return 100 * (1 - sum(kept) / max(1, sum(found)))

    def resized(factor: float | None, side: int | None, method: int):
        def transform(picture: np.ndarray) -> np.ndarray:
            scale = factor or side / max(picture.shape[:2])
            size = (round(picture.shape[1] * scale), round(picture.shape[0] * scale))
            return cv2.resize(picture, size, interpolation=method)

        return transform

    on_the_file = hide_rate(lambda picture: picture)
    rates = {}
    assert on_the_file >= 50  # the attack hides most faces (the level is bench/tools.py's job)
    for factor, side in ((0.9, None), (None, 1080), (None, 2048)):
        for method in (cv2.INTER_AREA, cv2.INTER_LINEAR):
            rate = hide_rate(resized(factor, side, method))
            rates[(factor, side, method)] = rate
    print(f"saved {on_the_file:.1f} %", rates)
    assert all(rate >= on_the_file - 5 for rate in rates.values()), (on_the_file, rates)
