"""Weight store: lookup order, checksum checks, and real downloads from a loopback server."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deepguard.cli import main
from deepguard.models.store import WeightError, WeightFile, WeightStatus, WeightStore
from deepguard.settings import Settings

PAYLOAD = b"not really a checkpoint, but bytes with a known digest" * 1000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at /good.pth and a connection that dies half-way at /cut.pth."""

    def do_GET(self) -> None:
        if self.path.endswith("/good.pth"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path.endswith("/cut.pth"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.connection.close()
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/weights"
    httpd.shutdown()
    httpd.server_close()


def make_store(tmp_path: Path, **overrides: object) -> WeightStore:
    settings = Settings(
        DEEPGUARD_WEIGHTS_DIR=tmp_path / "shared",
        DEEPGUARD_WEIGHTS_CACHE=tmp_path / "cache",
        DEEPGUARD_DOWNLOAD_TIMEOUT=5,
        **overrides,
    )
    return WeightStore(settings)


def test_local_folder_is_used_first_and_verified(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "good.pth").write_bytes(PAYLOAD)
    store = make_store(tmp_path)
    path = store.resolve(WeightFile("good.pth", DIGEST), download=False)
    assert path == tmp_path / "shared" / "good.pth"


def test_checksum_mismatch_is_reported_and_never_loaded(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "good.pth").write_bytes(PAYLOAD + b"tampered")
    store = make_store(tmp_path)
    file = WeightFile("good.pth", DIGEST)
    assert store.status(file)[0] is WeightStatus.MISMATCH
    with pytest.raises(WeightError, match="does not match its pinned sha256"):
        store.resolve(file, download=False)


def test_missing_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(WeightError) as raised:
        store.resolve(WeightFile("absent.pth", DIGEST), download=True)
    message = str(raised.value)
    assert "absent.pth" in message and "DEEPGUARD_WEIGHTS_BASE_URL" in message
    assert "\n" not in message


def test_download_from_mirror_lands_verified_in_cache(tmp_path: Path, server: str) -> None:
    store = make_store(tmp_path, DEEPGUARD_WEIGHTS_BASE_URL=server)
    path = store.resolve(WeightFile("good.pth", DIGEST))
    assert path == tmp_path / "cache" / "good.pth"
    assert path.read_bytes() == PAYLOAD
    # a second lookup finds the cached copy and does not download again
    assert store.status(WeightFile("good.pth", DIGEST)) == (WeightStatus.AVAILABLE, path)


def test_download_with_wrong_digest_leaves_no_file(tmp_path: Path, server: str) -> None:
    store = make_store(tmp_path, DEEPGUARD_WEIGHTS_BASE_URL=server)
    with pytest.raises(WeightError, match="serves a different file"):
        store.resolve(WeightFile("good.pth", "0" * 64))
    assert list((tmp_path / "cache").iterdir()) == []


def test_interrupted_download_leaves_no_file(tmp_path: Path, server: str) -> None:
    store = make_store(tmp_path, DEEPGUARD_WEIGHTS_BASE_URL=server)
    with pytest.raises(WeightError, match=r"cut\.pth"):
        store.resolve(WeightFile("cut.pth", DIGEST))
    assert list((tmp_path / "cache").iterdir()) == []


def test_unreachable_url_is_one_clear_line(tmp_path: Path) -> None:
    # port 9 on loopback: nothing listens there, the connection is refused at once
    store = make_store(tmp_path, DEEPGUARD_WEIGHTS_BASE_URL="http://127.0.0.1:9/weights")
    with pytest.raises(WeightError, match=r"cannot download good\.pth") as raised:
        store.resolve(WeightFile("good.pth", DIGEST))
    assert "\n" not in str(raised.value)


def test_unpinned_file_is_refused_unless_allowed(tmp_path: Path, server: str) -> None:
    file = WeightFile("good.pth", None)
    with pytest.raises(WeightError, match="no sha256 pinned"):
        make_store(tmp_path, DEEPGUARD_WEIGHTS_BASE_URL=server).resolve(file)
    store = make_store(
        tmp_path, DEEPGUARD_WEIGHTS_BASE_URL=server, DEEPGUARD_ALLOW_UNPINNED_WEIGHTS=True
    )
    assert store.resolve(file).read_bytes() == PAYLOAD


def test_cli_reports_missing_weights_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepguard.settings import get_settings

    monkeypatch.setenv("DEEPGUARD_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("DEEPGUARD_WEIGHTS_CACHE", str(tmp_path / "cache"))
    get_settings.cache_clear()
    try:
        assert main(["models", "fetch", "faceboxes"]) == 1
        assert main(["models", "list"]) == 0
    finally:
        get_settings.cache_clear()
    captured = capsys.readouterr()
    assert "faceboxes.pth not found" in captured.err
    assert "Traceback" not in captured.err
    assert "missing" in captured.out


def test_shipped_weights_verify(weights_dir: Path) -> None:
    """Every pinned file in ../shared/weights matches configs/detectors.yaml."""
    from deepguard.models.registry import detector_specs

    store = WeightStore(Settings(DEEPGUARD_WEIGHTS_DIR=weights_dir))
    for spec in detector_specs().values():
        if spec.shipped:
            for file in spec.files:
                assert store.status(file)[0] is WeightStatus.AVAILABLE, file.name


def test_models_list_shows_the_licence_of_restricted_weights(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from deepguard.models.registry import detector_specs

    specs = detector_specs()
    assert specs["scrfd_500m"].licence == (
        "InsightFace pretrained models: non-commercial research only"
    )
    assert specs["yolo5face_n05"].licence.startswith("GPL-3.0")
    assert specs["retinaface"].licence is None
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    detectors, _, catalogue = out.partition("the face-swap tools' own detector files")
    lines = detectors.splitlines()
    scrfd = next(i for i, line in enumerate(lines) if line.startswith("scrfd_500m "))
    assert "licence: InsightFace pretrained models: non-commercial" in lines[scrfd + 1]
    assert sum("licence:" in line for line in lines) == sum(
        spec.licence is not None for spec in specs.values()
    )
    # every file of the tools' catalogue says its licence too
    from deepguard.models.catalogue import tool_weights

    assert catalogue.count("licence:") == len(tool_weights())
