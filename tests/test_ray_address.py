"""A ``RAY_ADDRESS`` or Jobs API address where no Ray listens fails at once, with what answered.

Real listeners on loopback: Python's own HTTP server (a web server, not Ray) and a socket
that accepts connections and never says anything.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from deepguard.cli import main
from deepguard.settings import get_settings


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """Accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for connection in accepted:
        connection.close()


@pytest.fixture
def ray_address(monkeypatch: pytest.MonkeyPatch, web_server: str) -> Iterator[str]:
    monkeypatch.setenv("RAY_ADDRESS", web_server)
    get_settings.cache_clear()
    yield web_server
    get_settings.cache_clear()


def _photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (120, 90, 60)).save(path)
    return path


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, float]:
    started = time.monotonic()
    assert main(args) == 2
    return capsys.readouterr().err, time.monotonic() - started


def test_protect_names_the_address_and_what_answered(
    ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = _photo(tmp_path)
    error, seconds = _refused(["protect", str(photo), "-q"], capsys)
    assert f"RAY_ADDRESS={ray_address}: that is not a Ray cluster" in error
    assert "HTTP/1.0 200 OK" in error and len(error.strip().splitlines()) == 1
    assert seconds < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]  # nothing written


def test_watch_and_serve_refuse_it_before_starting(
    ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    _photo(inbox)
    error, seconds = _refused(["watch", str(inbox), str(outbox), "--once"], capsys)
    assert "not a Ray cluster" in error and seconds < 10
    assert not outbox.exists() or not any(outbox.iterdir())
    assert [p.name for p in inbox.iterdir()] == ["photo.jpg"]  # the input stays where it was
    error, seconds = _refused(["serve", "--port", "0"], capsys)
    assert f"RAY_ADDRESS={ray_address}" in error and seconds < 10


def test_an_address_where_nothing_listens_is_refused_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    get_settings.cache_clear()
    try:
        error, _ = _refused(["protect", str(_photo(tmp_path)), "-q"], capsys)
    finally:
        get_settings.cache_clear()
    assert "nothing answers there" in error


def test_submit_to_a_server_that_never_answers_fails_in_seconds(
    silent_listener: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = _photo(tmp_path)
    error, seconds = _refused(
        ["submit", "--address", f"http://{silent_listener}", str(photo)], capsys
    )
    assert "no HTTP answer within 10 s" in error and seconds < 20


def test_submit_to_a_web_server_says_it_is_not_the_jobs_api(
    web_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error, _ = _refused(["submit", "--address", f"http://{web_server}", str(_photo(tmp_path))],
                        capsys)  # fmt: skip
    assert "cannot reach the Ray Jobs API" in error and "404" in error
