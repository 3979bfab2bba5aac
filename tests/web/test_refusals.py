"""What the API refuses, and how: in-process (Starlette's TestClient), no jobs, no Ray.

Every refusal, from our handlers or from FastAPI's routing and validation, is a JSON object
with a string ``detail`` and a string ``code``.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

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


def _assert_refusal(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("detail"), str), body
    assert body.get("code") == code, body
    return body


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/jobs/..%2F..%2Fetc%2Fpasswd", 404, "not_found"),
        ("GET", "/api/no-such-thing", 404, "not_found"),
        ("DELETE", "/api/health", 405, "method_not_allowed"),
        ("GET", "/api/jobs/" + "0" * 32, 404, "job_not_found"),
    ],
)
def test_routing_refusals_have_the_documented_shape(
    client: TestClient, method: str, path: str, status: int, code: str
) -> None:
    _assert_refusal(client.request(method, path), status, code)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"epsilon": 1000}, "epsilon"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": "many"}, "iterations"),
        ({"detectors": "retinaface"}, "detectors"),
        ({"region_mode": [1]}, "region_mode"),
    ],
)
def test_invalid_options_are_one_line_with_field_errors(
    client: TestClient, options: dict, field: str
) -> None:
    body = _assert_refusal(
        client.post("/api/jobs", json={"upload_id": "0" * 32, **options}), 422, "invalid_options"
    )
    assert body["detail"].startswith(f"{field}: ") and "\n" not in body["detail"]
    assert [error["loc"][-1] for error in body["errors"]] == [field]


def test_estimate_checks_the_same_bounds(client: TestClient) -> None:
    for query in ({"epsilon": "1000"}, {"iterations": "0"}, {"iterations": "x"}):
        response = client.get("/api/estimate", params={"upload_id": "0" * 32, **query})
        body = _assert_refusal(response, 422, "invalid_options")
        assert body["detail"].startswith(next(iter(query)))


@pytest.mark.parametrize(
    "body", [b"{not json", b"", b"[1, 2]", b'"text"', b'{"upload_id": 7}', b"\xff\xfe"]
)
def test_malformed_bodies_are_refused_in_shape(client: TestClient, body: bytes) -> None:
    headers = {"content-type": "application/json"}
    for path in ("/api/jobs", "/api/session"):
        _assert_refusal(client.post(path, content=body, headers=headers), 422, "invalid_options")


def test_openapi_documents_the_refusal() -> None:
    app = create_app(Settings())
    schema = app.openapi()
    assert set(schema["components"]["schemas"]["Refusal"]["required"]) == {"detail", "code"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert schema["paths"]["/api/jobs"]["post"]["responses"]["4XX"]


def test_a_server_fault_keeps_the_shape(tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = create_app(Settings(DEEPGUARD_DATA_DIR=data))
    (data / "uploads").write_text("a file where the uploads folder should be")
    client = TestClient(app, raise_server_exceptions=False)
    response = client.post("/api/uploads", content=b"\xff\xd8\xff" * 10, headers=OCTETS)
    _assert_refusal(response, 500, "internal_error")


def test_the_session_cookie_does_not_carry_the_token(tmp_path: Path) -> None:
    token = "s3cret-token"
    app = create_app(Settings(DEEPGUARD_DATA_DIR=tmp_path / "data", DEEPGUARD_API_TOKEN=token))
    browser = TestClient(app, raise_server_exceptions=False)
    _assert_refusal(browser.get("/api/jobs"), 401, "unauthorized")
    assert browser.post("/api/session", json={"token": token}).status_code == 200
    cookie = browser.cookies["deepguard_session"]
    assert token not in cookie and len(cookie) == 64
    assert browser.get("/api/jobs").status_code == 200  # the derived value is the session

    thief = TestClient(app, raise_server_exceptions=False, cookies={"deepguard_session": token})
    _assert_refusal(thief.get("/api/jobs"), 401, "unauthorized")  # the raw token is no cookie
    other = create_app(Settings(DEEPGUARD_DATA_DIR=tmp_path / "data", DEEPGUARD_API_TOKEN=token))
    restarted = TestClient(
        other, raise_server_exceptions=False, cookies={"deepguard_session": cookie}
    )
    _assert_refusal(restarted.get("/api/jobs"), 401, "unauthorized")  # a new process, a new key
    bearer = {"authorization": f"Bearer {token}"}
    assert TestClient(app).get("/api/jobs", headers=bearer).status_code == 200


@pytest.mark.parametrize("guess", ["s3crét", "\ud800", "x" * 10_000])
def test_any_wrong_token_is_a_plain_refusal(tmp_path: Path, guess: str) -> None:
    app = create_app(Settings(DEEPGUARD_DATA_DIR=tmp_path / "data", DEEPGUARD_API_TOKEN="s3cret"))
    client = TestClient(app, raise_server_exceptions=False)
    body = json.dumps({"token": guess}).encode()  # ASCII, with \u escapes
    response = client.post(
        "/api/session", content=body, headers={"content-type": "application/json"}
    )
    _assert_refusal(response, 401, "unauthorized")
    header = {"authorization": b"Bearer " + guess.encode("utf-8", "surrogatepass")}
    _assert_refusal(client.get("/api/jobs", headers=header), 401, "unauthorized")


def test_an_image_whose_exif_breaks_the_parser_is_refused(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 3
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "WEBP", exif=exif.tobytes())
    broken = buffer.getvalue().replace(b"MM\x00*", b"\x13M\x00*")  # no longer a TIFF header
    response = client.post("/api/uploads", content=broken, headers=OCTETS)
    _assert_refusal(response, 422, "unreadable")
