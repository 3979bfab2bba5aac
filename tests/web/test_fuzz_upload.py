"""A fast, seeded sample of the upload fuzz; ``bench/fuzz_upload.py`` runs the long version."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from bench.fuzz_upload import fuzz_upload_case, make_client, run


def test_a_seeded_sample_of_generated_uploads_never_crashes() -> None:
    counts, crashes = run(cases=150, random_seed=0)
    assert not crashes, "\n".join(crashes)
    assert counts["cases"] == 150 and counts["refused"] > 0 and counts["accepted"] > 0


def test_each_outcome_is_told_apart(tmp_path: Path) -> None:
    """The judge itself: a good photo, a cut one, and a server that cannot store uploads."""
    photo = io.BytesIO()
    Image.new("RGB", (9, 7), (200, 120, 80)).save(photo, "JPEG")
    client = make_client(tmp_path / "ok")
    assert fuzz_upload_case(client, photo.getvalue(), "a.jpg") == "accepted"
    assert fuzz_upload_case(client, photo.getvalue()[:40], "a.jpg") == "refused"
    assert not list((tmp_path / "ok" / "uploads").iterdir())  # accepted uploads are removed

    broken = make_client(tmp_path / "broken")
    (tmp_path / "broken" / "uploads").write_text("not a folder")
    outcome = fuzz_upload_case(broken, photo.getvalue(), "a.jpg")
    assert outcome.startswith("crash:exception NotADirectoryError"), outcome
