"""The dashboard's HTTP and WebSocket API, against a real uvicorn server, with httpx.

Jobs run for real (RetinaFace alone, a few iterations, a real shared photo), so every figure
the API returns was produced by the attack.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from deepguard.cli import main as cli_main
from deepguard.settings import Settings
from tests.web.server import running_server

QUICK = {"detectors": ["retinaface"], "iterations": 3}
OCTETS = {"content-type": "application/octet-stream"}


def _settings(data_dir: Path, **changes) -> Settings:
    return Settings(DEEPGUARD_DATA_DIR=data_dir, DEEPGUARD_MAX_UPLOAD_MB=2, **changes)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-data")


@pytest.fixture(scope="module")
def client(data_dir: Path) -> Iterator[httpx.Client]:
    with running_server(_settings(data_dir)) as base, httpx.Client(base_url=base, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def photo(media_dir: Path) -> bytes:
    """A real portrait, downscaled so each job takes a few seconds."""
    image = Image.open(media_dir / "lp_s0.jpg").convert("RGB")
    image.thumbnail((320, 320))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _upload(client: httpx.Client, data: bytes, name: str = "photo.jpg") -> httpx.Response:
    return client.post("/api/uploads", params={"name": name}, content=data, headers=OCTETS)


def _follow(client: httpx.Client, job_id: str) -> list[dict]:
    """Every event the WebSocket sends until the job ends."""
    url = str(client.base_url).replace("http", "ws", 1) + f"/api/jobs/{job_id}/events"
    with connect(url, open_timeout=10) as socket:
        events = [json.loads(message) for message in socket]
    assert events and events[-1]["final"]
    return events


@pytest.fixture(scope="module")
def finished(client: httpx.Client, photo: bytes) -> tuple[dict, list[dict]]:
    """One protected photo, followed live: (the final job, every event)."""
    upload = _upload(client, photo, "../../Press Photo.jpg").json()
    job = client.post("/api/jobs", json={"upload_id": upload["id"], **QUICK}).json()
    events = _follow(client, job["id"])
    return events[-1], events


def test_health_config_and_openapi(client: httpx.Client) -> None:
    assert client.get("/api/health").json()["status"] == "ok"
    config = client.get("/api/config").json()
    assert set(config["presets"]) == {"balanced", "strong", "small-faces"}
    assert {"retinaface", "mtcnn", "yunet"} <= {d["name"] for d in config["detectors"]}
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/uploads", "/api/estimate", "/api/jobs", "/api/jobs/{job_id}",
                 "/api/jobs/{job_id}/frames/{index}.png", "/api/jobs/{job_id}/qr.svg"):  # fmt: skip
        assert path in paths


def test_upload_is_stored_under_a_random_name(
    client: httpx.Client, photo: bytes, data_dir: Path
) -> None:
    response = _upload(client, photo, "../../etc/passwd.jpg")
    assert response.status_code == 201
    upload = response.json()
    assert upload["kind"] == "image" and upload["name"] == "passwd.jpg"
    assert (upload["width"], upload["height"]) == Image.open(io.BytesIO(photo)).size
    stored = list((data_dir / "uploads" / upload["id"]).iterdir())
    assert sorted(p.name for p in stored) == ["original.jpg", "upload.json"]


def test_type_comes_from_the_content_not_the_name(client: httpx.Client, photo: bytes) -> None:
    png = io.BytesIO()
    Image.open(io.BytesIO(photo)).save(png, "PNG")
    renamed = _upload(client, png.getvalue(), "holiday.mp4")
    assert renamed.status_code == 201 and renamed.json()["suffix"] == ".png"

    script = _upload(client, b"#!/bin/sh\nrm -rf /\n" * 10, "photo.jpg")
    assert script.status_code == 415 and script.json()["code"] == "unsupported_type"
    empty = _upload(client, b"", "photo.jpg")
    assert empty.status_code == 415
    truncated = _upload(client, photo[: len(photo) // 3], "photo.jpg")
    assert truncated.status_code == 422 and truncated.json()["code"] == "unreadable"
    fake_video = _upload(client, b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 4000, "clip.mp4")
    assert fake_video.status_code == 422 and "not a readable video" in fake_video.json()["detail"]


def test_size_limit_holds_with_and_without_content_length(
    client: httpx.Client, data_dir: Path
) -> None:
    before = set((data_dir / "uploads").iterdir())
    big = b"\xff\xd8\xff" + b"\x00" * (3 * 2**20)
    declared = _upload(client, big)
    assert declared.status_code == 413 and declared.json()["code"] == "too_large"

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to check first
        for start in range(0, len(big), 2**16):
            yield big[start : start + 2**16]

    streamed = client.post("/api/uploads", content=chunks(), headers=OCTETS)
    assert streamed.status_code == 413
    assert set((data_dir / "uploads").iterdir()) == before  # nothing half-written left


def test_ids_cannot_traverse_paths(client: httpx.Client) -> None:
    for job_id in ("..%2F..%2Fjobs.sqlite3", "0" * 32, "ABC", "0" * 31 + "g"):
        response = client.get(f"/api/jobs/{job_id}")
        assert response.status_code == 404, job_id
    estimate = client.get("/api/estimate", params={"upload_id": "../uploads"})
    assert estimate.status_code == 404 and estimate.json()["code"] == "upload_not_found"


def test_bad_options_are_refused_with_a_reason(client: httpx.Client, photo: bytes) -> None:
    upload_id = _upload(client, photo).json()["id"]
    unknown = client.post("/api/jobs", json={"upload_id": upload_id, "preset": "turbo"})
    assert unknown.status_code == 400 and "unknown preset" in unknown.json()["detail"]
    detector = client.post("/api/jobs", json={"upload_id": upload_id, "detectors": ["nope"]})
    assert detector.status_code == 400 and "unknown detector" in detector.json()["detail"]
    tool = client.post("/api/jobs", json={"upload_id": upload_id, "tools": ["nope"]})
    assert tool.status_code == 400 and "unknown tool profile" in tool.json()["detail"]
    missing = client.post("/api/jobs", json={"upload_id": upload_id, "detectors": ["s3fd"]})
    assert missing.status_code == 400 and missing.json()["code"] == "weights_missing"
    budget = client.post("/api/jobs", json={"upload_id": upload_id, "epsilon": 100})
    assert budget.status_code == 422


def test_estimate_scales_with_the_work(client: httpx.Client, photo: bytes) -> None:
    upload_id = _upload(client, photo).json()["id"]
    few = client.get("/api/estimate", params={"upload_id": upload_id, "iterations": 4}).json()
    many = client.get("/api/estimate", params={"upload_id": upload_id, "iterations": 40}).json()
    assert few["seconds"] > 0 and many["seconds"] == pytest.approx(10 * few["seconds"], rel=0.1)


def test_progress_is_live_per_stage_and_detector(finished: tuple[dict, list[dict]]) -> None:
    _, events = finished
    states = [event["state"] for event in events]
    assert states[-1] == "done" and "running" in states
    running = [event for event in events if event["state"] == "running"]
    assert any("attack" in event["progress"]["phases"] for event in running)
    detectors = [event["progress"]["detectors"].get("retinaface", {}) for event in running]
    assert any("loss_removed_pct" in d for d in detectors)
    assert any("faces_found" in d for d in detectors)
    assert all(event["progress"]["eta_s"] is not None for event in running)


def test_result_card_files_and_qr(
    client: httpx.Client, finished: tuple[dict, list[dict]], photo: bytes
) -> None:
    job, _ = finished
    card = job["result"]
    assert card["detectors"]["retinaface"]["faces_before"] >= 1
    assert card["psnr_db"] > 30 and card["seconds"] > 0
    assert job["page_url"] == f"{client.base_url}/jobs/{job['id']}"

    protected = client.get(job["links"]["download"])
    assert protected.status_code == 200
    disposition = protected.headers["content-disposition"]
    assert disposition.startswith("attachment") and "Press%20Photo.protected.jpg" in disposition
    clean = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"), np.int16)
    result = np.asarray(Image.open(io.BytesIO(protected.content)).convert("RGB"), np.int16)
    assert result.shape == clean.shape and np.abs(result - clean).max() > 0

    report = client.get(job["links"]["report"]).json()
    assert report["detectors"]["retinaface"] == card["detectors"]["retinaface"]

    frames = {
        which: np.asarray(Image.open(io.BytesIO(client.get(
            job["links"]["frame"].format(index=0, which=which)).content)), np.int16)
        for which in ("original", "protected")
    }  # fmt: skip
    assert np.array_equal(frames["protected"], result)  # the frame is the delivered file
    assert client.get(job["links"]["frame"].format(index=1, which="original")).status_code == 404

    svg = client.get(job["links"]["qr"])
    assert svg.headers["content-type"] == "image/svg+xml" and b"<svg" in svg.content


def test_result_card_lists_the_tools(
    client: httpx.Client, finished: tuple[dict, list[dict]]
) -> None:
    job, _ = finished
    tools = {row["tool"]: row for row in job["result"]["tools"]}
    # RetinaFace alone was attacked: it is the whole of faceswap's detectors, not DeepFaceLive's
    assert tools["faceswap"]["status"] in {"protected", "not protected"}
    assert tools["faceswap"]["title"] == "faceswap (GPU)" and tools["faceswap"]["faces_before"]
    assert "RetinaFace" in tools["faceswap"]["stand_in"]
    assert tools["deepfacelive"]["status"] == "not covered"
    report = client.get(job["links"]["report"]).json()
    assert [row["tool"] for row in report["tools"]] == list(tools)
    for row in report["tools"]:
        for key in ("title", "faces_before", "faces_after", "deliveries", "status", "stand_in"):
            assert tools[row["tool"]][key] == row[key]
    assert "saved" in tools["faceswap"]["deliveries"]  # the card says which copy it judged
    # the headline's groups are the table's: RetinaFace alone does not cover roop
    verdict = job["result"]["verdict"]
    assert "roop" in verdict["not_covered"] and "DeepFaceLive" in verdict["not_covered"]
    judged = verdict["protected"] + verdict["not_protected"]
    assert "faceswap (GPU)" in judged and "roop" not in judged
    # per face: the ε it got (within the cap), its crop's quality, whom it hides from
    faces = job["result"]["faces"]
    assert len(faces) == len(report["faces"]) >= 1
    for face, row in zip(faces, report["faces"], strict=True):
        assert 0 < face["epsilon"] <= report["parameters"]["epsilon"]
        assert face["ssim"] == row["ssim"] and "saved" in face["deliveries"]
    assert job["result"]["epsilon"]["max"] == max(face["epsilon"] for face in faces)


def test_estimate_learns_from_finished_jobs(
    client: httpx.Client, finished: tuple[dict, list[dict]], photo: bytes
) -> None:
    upload_id = _upload(client, photo).json()["id"]
    guess = client.get("/api/estimate", params={"upload_id": upload_id, **QUICK,
                                                "detectors": "retinaface"}).json()  # fmt: skip
    assert guess["basis"] == "recent" and guess["samples"] >= 1
    assert guess["seconds"] == pytest.approx(finished[0]["result"]["seconds"], rel=0.5)


def test_history_lists_only_named_jobs_and_delete_removes_files(
    client: httpx.Client, photo: bytes, data_dir: Path
) -> None:
    upload = _upload(client, photo).json()
    job = client.post("/api/jobs", json={"upload_id": upload["id"], **QUICK}).json()
    _follow(client, job["id"])
    listed = client.get("/api/jobs", params={"ids": f"{job['id']},{'0' * 32},bogus"}).json()
    assert [j["id"] for j in listed] == [job["id"]]
    assert (data_dir / "results" / job["id"]).is_dir()

    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert not (data_dir / "results" / job["id"]).exists()
    assert not (data_dir / "uploads" / upload["id"]).exists()
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404


def test_queue_is_bounded(data_dir: Path, photo: bytes) -> None:
    settings = _settings(data_dir / "queue", DEEPGUARD_WEB_MAX_QUEUE=1)
    with running_server(settings) as base, httpx.Client(base_url=base, timeout=120) as client:
        upload_id = _upload(client, photo).json()["id"]
        body = {"upload_id": upload_id, **QUICK}
        responses = [client.post("/api/jobs", json=body) for _ in range(3)]
        assert responses[2].status_code == 429 and responses[2].json()["code"] == "queue_full"
        for response in responses:
            if response.status_code == 202:
                _follow(client, response.json()["id"])


def test_api_token(data_dir: Path, photo: bytes) -> None:
    settings = _settings(data_dir / "token", DEEPGUARD_API_TOKEN="s3cret")
    with running_server(settings) as base, httpx.Client(base_url=base, timeout=60) as client:
        assert client.get("/api/health").status_code == 200  # for health checks
        assert client.get("/api/config").json()["auth_required"] is True
        refused = _upload(client, photo)
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        wrong = client.post("/api/session", json={"token": "guess"})
        assert wrong.status_code == 401
        bearer = {"authorization": "Bearer s3cret", **OCTETS}
        assert client.post("/api/uploads", content=photo, headers=bearer).status_code == 201
        events_url = base.replace("http", "ws") + f"/api/jobs/{'0' * 32}/events"
        with pytest.raises(ConnectionClosed) as closed, connect(events_url) as ws:
            ws.recv(timeout=10)  # a WebSocket without the token is closed with 4401
        assert closed.value.rcvd.code == 4401

        session = client.post("/api/session", json={"token": "s3cret"})
        cookie = session.headers["set-cookie"].lower()
        assert session.status_code == 200 and "httponly" in cookie and "samesite=strict" in cookie
        assert _upload(client, photo).status_code == 201  # the session cookie is enough


def test_serve_refuses_an_open_bind_without_a_token(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["serve", "--host", "0.0.0.0"]) == 2
    assert "DEEPGUARD_API_TOKEN" in capsys.readouterr().err


def test_a_job_that_fails_on_the_cluster_says_why(
    client: httpx.Client, photo: bytes, data_dir: Path
) -> None:
    upload = _upload(client, photo).json()
    (data_dir / "uploads" / upload["id"] / "original.jpg").write_bytes(photo[:200])  # corrupted
    job = client.post("/api/jobs", json={"upload_id": upload["id"], **QUICK}).json()
    final = _follow(client, job["id"])[-1]
    assert final["state"] == "failed" and final["result"] is None
    assert "original.jpg: corrupt or truncated image" in final["error"]
    assert client.get(final["links"]["download"]).status_code == 410
