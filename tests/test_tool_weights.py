"""The tools' own detector files: fetched once by their published hash from a local server
laid out like the real sources (no test reaches the internet), verified, extracted from an
archive, loaded, and each tool then judged on them; without a network, stand-ins."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from deepguard.attack.config import load_preset
from deepguard.cli import main
from deepguard.models import catalogue, registry
from deepguard.models.catalogue import tool_weights
from deepguard.settings import get_settings
from tests.conftest import weight_file

#: the catalogue as published (issue 29's table, from the tools' code and public manifests)
PUBLISHED = {
    "det_10g.onnx": (16923827, "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91"),
    "yoloface_8n.onnx": (
        12659761, "821cdbb1e65fbbabdde7dd0933f754797a343e56fd962729c61ffcefcd135929"),
    "retinaface_10g.onnx": (
        16926877, "808399c3d0b40ed340634ed590ae564a7caa09e5659916923a95d4470b54ff5a"),
    "detection_Resnet50_Final.pth": (
        109497761, "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d"),
    "s3fd-619a316812.pth": (
        89843225, "619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543"),
}  # fmt: skip
BUFFALO_L = ("80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f", 288621354)


def test_the_catalogue_pins_the_published_hashes_and_sizes() -> None:
    entries = tool_weights()
    assert {name: (e.file.size, e.file.sha256) for name, e in entries.items()} == PUBLISHED
    zipped = entries["det_10g.onnx"].file.sources[1]
    assert zipped.url.endswith("/v0.7/buffalo_l.zip")
    assert (zipped.archive.sha256, zipped.archive.size, zipped.archive.member) == (
        *BUFFALO_L, "det_10g.onnx")  # fmt: skip
    assert entries["det_10g.onnx"].file.sources[0].url.startswith("https://huggingface.co/")
    assert "non-commercial" in entries["det_10g.onnx"].licence
    assert entries["s3fd-619a316812.pth"].licence.startswith("BSD-3-Clause")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Sources(BaseHTTPRequestHandler):
    """Serves ``files`` (path → bytes); 404 for anything else."""

    files: dict[str, bytes] = {}
    requested: list[str] = []

    def do_GET(self) -> None:
        self.requested.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sources(weights_dir: Path) -> Iterator[tuple[str, bytes, bytes, list[str]]]:
    """A local server laid out like the real sources: a ``buffalo_l.zip`` whose
    ``det_10g.onnx`` member is a stand-in graph (det_500m.onnx, copied), beside another
    member, and a direct file that is not the one pinned."""
    member = weight_file(weights_dir, "det_500m.onnx").read_bytes()
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("1k3d68.onnx", b"another model of the pack")
        archive.writestr("det_10g.onnx", member)
    handler = type("Handler", (_Sources,), {"requested": [], "files": {
        "/v0.7/buffalo_l.zip": packed.getvalue(),
        "/hf/buffalo_l/det_10g.onnx": b"<html>a login page, not the model</html>",
    }})  # fmt: skip
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield (f"http://127.0.0.1:{httpd.server_address[1]}", member, packed.getvalue(),
           handler.requested)  # fmt: skip
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty weight cache, the fetch on, and no cached catalogue or detector."""
    monkeypatch.setenv("DEEPGUARD_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DEEPGUARD_TOOL_WEIGHTS", "on")

    def clear() -> None:
        get_settings.cache_clear()
        catalogue._catalogue_from.cache_clear()
        registry.detector_specs.cache_clear()
        registry._built.pop(("scrfd_10g", "cpu"), None)
        catalogue._verified.clear()

    clear()
    yield tmp_path / "cache"
    monkeypatch.undo()
    clear()


def _catalogue_file(tmp_path: Path, base: str, member: bytes, packed: bytes) -> Path:
    """det_10g.onnx as published: the Hugging Face file first, then the zip; here both on
    the local server, with the digests of the test's bytes."""
    path = tmp_path / "tool_weights.yaml"
    entry = {
        "detector": "scrfd_10g", "title": "SCRFD-10G (a stand-in graph for the test)",
        "sha256": _sha(member), "size": len(member), "licence": "test licence: research only",
        "tools": "roop and the others", "sources": [
            {"url": f"{base}/hf/buffalo_l/det_10g.onnx"},
            {"url": f"{base}/v0.7/buffalo_l.zip", "archive": {
                "sha256": _sha(packed), "size": len(packed), "member": "det_10g.onnx"}},
        ],
    }  # fmt: skip
    path.write_text(yaml.safe_dump({"files": {"det_10g.onnx": entry}}))
    return path


def test_fetched_verified_extracted_loaded_and_the_tools_say_own_weights(
    sources, fresh: Path, tmp_path: Path, monkeypatch, capsys, media_dir: Path
) -> None:
    base, member, packed, requested = sources
    monkeypatch.setenv(
        "DEEPGUARD_TOOL_WEIGHTS_FILE", str(_catalogue_file(tmp_path, base, member, packed))
    )
    get_settings.cache_clear()
    assert main(["models", "fetch", "--tools", "det_10g.onnx"]) == 0
    out = capsys.readouterr().out
    # the direct source served the wrong bytes: refused, then the zip's member was taken
    assert requested == ["/hf/buffalo_l/det_10g.onnx", "/v0.7/buffalo_l.zip"]
    assert "det_10g.onnx fetched and verified" in out and "licence: test licence" in out
    assert sorted(p.name for p in fresh.iterdir()) == ["det_10g.onnx"]  # nothing else kept
    assert (fresh / "det_10g.onnx").read_bytes() == member
    assert catalogue.present() == {"scrfd_10g"}
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if line.startswith("det_10g.onnx"))
    assert "available" in row and _sha(member)[:12] in row

    # a run of `balanced` attacks the tools' own detector in place of its stand-in, and the
    # tools that run it are judged on it
    from deepguard.pipeline.protect import Protector

    config = load_preset("balanced", tools=["roop", "faceswap"], iterations=1,
                         repair_rounds=0, shrink_steps=0)  # fmt: skip
    protector = Protector(config)
    assert protector.config.detectors[0] == "scrfd_10g"
    assert "scrfd_500m" not in protector.config.detectors
    source = tmp_path / "portrait.png"
    Image.open(media_dir / "lp_s12.jpg").convert("RGB").save(source)
    report = protector.protect(source, tmp_path / "out.png")
    rows = {row["tool"]: row for row in report["tools"]}
    assert rows["roop"]["weights"] == "own weights" and rows["roop"]["detectors"] == ["scrfd_10g"]
    assert rows["roop"]["stand_in"] is None and rows["roop"]["status"] != "not covered"
    assert rows["faceswap"]["weights"] == "stand-in: retinaface"


def test_a_wrong_hash_is_refused_and_nothing_of_it_stays(
    sources, fresh: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    base, member, packed, _ = sources
    path = _catalogue_file(tmp_path, base, member, packed)
    table = yaml.safe_load(path.read_text())
    table["files"]["det_10g.onnx"]["sha256"] = "0" * 64  # no source serves this file
    path.write_text(yaml.safe_dump(table))
    monkeypatch.setenv("DEEPGUARD_TOOL_WEIGHTS_FILE", str(path))
    get_settings.cache_clear()
    assert main(["models", "fetch", "--tools"]) == 1
    err = capsys.readouterr().err
    det_10g = next(line for line in err.splitlines() if line.startswith("det_10g.onnx"))
    # both sources were tried: the direct one has the wrong size, the zip's member the wrong
    # digest
    assert "serves a different file" in det_10g and "the archive holds a different file" in det_10g
    assert not fresh.exists() or list(fresh.iterdir()) == []
    assert catalogue.present() == set()


def test_no_network_is_one_line_exit_0_and_stand_ins(
    fresh: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Nothing listens: the run goes on at once, on stand-ins, and says so in one line."""
    path = tmp_path / "tool_weights.yaml"
    table = {"files": {name: {"sources": [{"url": f"http://127.0.0.1:9/{name}"}]}
                       for name in PUBLISHED}}  # fmt: skip
    for name, entry in tool_weights().items():  # the real entries, but sources here
        table["files"][name].update(detector=entry.detector, title=entry.title,
                                    sha256=entry.file.sha256, size=entry.file.size,
                                    licence=entry.licence, tools=entry.tools)  # fmt: skip
    path.write_text(yaml.safe_dump(table))
    monkeypatch.setenv("DEEPGUARD_TOOL_WEIGHTS_FILE", str(path))
    get_settings.cache_clear()
    blank = tmp_path / "blank.png"  # no face: the run itself takes no time
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(blank)
    assert main(["protect", str(blank), "-o", str(tmp_path / "out.png")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "stand-ins" in line]
    assert len(lines) == 1
    assert "judged on stand-ins: roop, Deep-Live-Cam" in lines[0] and "FaceFusion" in lines[0]
    assert "the next start tries again" in lines[0]
    assert (tmp_path / "out.png").exists()
    # off: not even tried
    monkeypatch.setenv("DEEPGUARD_TOOL_WEIGHTS", "off")
    get_settings.cache_clear()
    assert main(["protect", str(blank), "-o", str(tmp_path / "again.png")]) == 0
    assert "stand-ins" not in capsys.readouterr().err


def test_detectors_chosen_by_hand_are_attacked_as_chosen() -> None:
    config = load_preset("balanced")
    assert config.with_tool_weights({"scrfd_10g", "yoloface_8n"}).detectors == [
        "scrfd_10g", "retinaface", "yoloface_8n", "yunet"]  # fmt: skip
    assert config.with_tool_weights(set()).detectors == config.detectors
    on_gpu = config.with_tool_weights({"retinaface_r50", "s3fd_fan"}, gpu=True)
    assert on_gpu.detectors[-2:] == ["retinaface_r50", "s3fd_fan"]
    assert config.with_tool_weights({"retinaface_r50"}).detectors == config.detectors  # CPU
    chosen = load_preset("balanced", detectors=["scrfd_500m", "yunet"])
    assert chosen.with_tool_weights({"scrfd_10g"}).detectors == ["scrfd_500m", "yunet"]
    strong = load_preset("strong").with_tool_weights({"s3fd_fan", "retinaface_r50"})
    assert {"s3fd_fan", "retinaface_r50"} <= set(strong.detectors)
