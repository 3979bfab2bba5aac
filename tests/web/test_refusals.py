"""What the API refuses, and how: in-process (Starlette's TestClient), no jobs, no Ray.

Every refusal, from our handlers or from FastAPI's routing and validation, is a JSON object
with a string ``detail`` and a string ``code``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepguard.settings import Settings
from deepguard.web.app import create_app
from tests.media import faststart_copy, make_clip

with warnings.catch_warnings():  # Starlette asks for httpx2; the client works as before
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

OCTETS = {"content-type": "application/octet-stream"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(DEEPGUARD_DATA_DIR=tmp_path / "data", DEEPGUARD_MAX_UPLOAD_MB=2))
    yield TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def clip(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    return make_clip(videos_dir / "lp_d11.mp4", folder / "talk.mp4", 20, size=(128, 128))


def test_a_clip_cut_short_with_its_index_first_is_refused(
    client: TestClient, clip: Path, tmp_path: Path
) -> None:
    whole = faststart_copy(clip, tmp_path / "web.mp4").read_bytes()
    accepted = client.post("/api/uploads", params={"name": "web.mp4"}, content=whole,
                           headers=OCTETS)  # fmt: skip
    assert accepted.status_code == 201 and accepted.json()["frames"] == 20
    cut = client.post("/api/uploads", params={"name": "web.mp4"}, content=whole[: len(whole) // 2],
                      headers=OCTETS)  # fmt: skip
    assert cut.status_code == 422, cut.text
    assert cut.json()["code"] == "unreadable" and "truncated" in cut.json()["detail"]
    uploads = tmp_path / "data" / "uploads"
    assert [p.name for p in uploads.iterdir()] == [accepted.json()["id"]]  # nothing left behind
