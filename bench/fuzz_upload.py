"""Fuzz the upload API (``POST /api/uploads``) with generated bad inputs (Hypothesis).

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/fuzz_upload.py
     [--cases 10000] [--seed 0] [--limit-s 30]

Each case posts bytes, under a generated file name, to the real FastAPI app in this process
(Starlette's TestClient, a throwaway data folder). The bytes are small valid JPEG, PNG and WebP
images and MP4/MOV clips made on the spot, then cut at any point, bit-flipped, overwritten
(2000 bytes mid-file, say), given another format's magic, headers claiming huge sizes or
boxes, garbage appended or inserted; or a few raw bytes, tiny and odd sizes included. An
upload only checks and stores the file: jobs (``POST /api/jobs``) run the attack, so the fuzz
runs none (the app's lifespan, which starts the job runner, is not entered either).

A case ends as ``refused`` (a 4xx in the documented ``{"detail", "code"}`` shape, nothing left
under ``uploads/``), ``accepted`` (201, the file and its metadata stored; removed again), or
``crash:<why>``: a 5xx, a refusal in another shape, an exception, a hang past the limit, or an
upload folder left behind by a refused upload. Prints the counts and every crash.
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from deepguard.settings import Settings
from deepguard.web.app import create_app

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/fuzzing.py: the mutations both fuzz targets share
from tests.fuzzing import MAGICS, mutated  # noqa: E402

with warnings.catch_warnings():  # Starlette asks for httpx2; the client works as before
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

#: the upload limit while fuzzing: small, so oversized bodies are cheap to make
MAX_UPLOAD_MB = 1
OCTETS = {"content-type": "application/octet-stream"}
ODD_NAMES = (
    "photo.jpg",
    "clip.mp4",
    "../../etc/passwd",
    "..\\..\\boot.ini",
    "",
    ".",
    "..",
    "CON",
    "a" * 1000,
    "name\x00.jpg",
    "line\nbreak.png",
    "사진.webp",
    "/absolute/path.mov",
    "%2e%2e%2f.jpg",
)


# -- one case ----------------------------------------------------------------------------


def make_client(data_dir: Path) -> TestClient:
    """The real app on a throwaway data folder, the way the fuzz talks to it."""
    app = create_app(Settings(DEEPGUARD_DATA_DIR=data_dir, DEEPGUARD_MAX_UPLOAD_MB=MAX_UPLOAD_MB))
    return TestClient(app)


def fuzz_upload_case(client: TestClient, data: bytes, name: str, limit_s: float = 30.0) -> str:
    """Upload ``data`` as ``name``: ``refused``, ``accepted`` or ``crash:<why>``."""
    uploads = Path(client.app.state.settings.data_dir) / "uploads"
    before = _folders(uploads)
    outcome: dict[str, Any] = {}

    def post() -> None:
        try:
            outcome["response"] = client.post(
                "/api/uploads", params={"name": name}, content=data, headers=OCTETS
            )
        except Exception as error:  # the server raised: TestClient passes it on
            outcome["error"] = error

    worker = threading.Thread(target=post, name="fuzz-upload", daemon=True)
    worker.start()
    worker.join(limit_s)
    if worker.is_alive():
        return f"crash:hang past {limit_s:g} s"
    if "error" in outcome:
        error = outcome["error"]
        return f"crash:exception {type(error).__name__}: {str(error)[:200]}"
    response = outcome["response"]
    left = _folders(uploads) - before
    if response.status_code == 201:
        return _check_accepted(response, uploads, left)
    if not 400 <= response.status_code < 500:
        return f"crash:status {response.status_code}: {response.text[:200]}"
    shape = _refusal_shape(response)
    if shape:
        return f"crash:{shape}"
    if left:
        return f"crash:refused ({response.status_code}) but left {sorted(left)}"
    return "refused"


def _folders(uploads: Path) -> set[str]:
    return {p.name for p in uploads.iterdir()} if uploads.is_dir() else set()


def _refusal_shape(response) -> str | None:
    """What is wrong with a refusal's body, or None when it is ``{"detail", "code"}``."""
    try:
        body = response.json()
    except ValueError:
        return f"refusal {response.status_code} is not JSON: {response.text[:100]!r}"
    if not isinstance(body, dict):
        return f"refusal {response.status_code} is not an object: {body!r:.100}"
    if not isinstance(body.get("detail"), str) or not isinstance(body.get("code"), str):
        return f"refusal {response.status_code} lacks a string detail or code: {body!r:.200}"
    return None


def _check_accepted(response, uploads: Path, left: set[str]) -> str:
    """An accepted upload is stored once, as its content's type, then removed again."""
    body = response.json()
    upload_id = body.get("id")
    if left != {upload_id}:
        return f"crash:accepted {upload_id} but the new folders are {sorted(left)}"
    folder = uploads / upload_id
    stored = sorted(p.name for p in folder.iterdir())
    shutil.rmtree(folder)
    if stored != sorted([f"original{body.get('suffix')}", "upload.json"]):
        return f"crash:accepted, but stored {stored}"
    if not (
        body.get("width", 0) >= 1 and body.get("height", 0) >= 1 and body.get("frames", 0) >= 1
    ):
        return f"crash:accepted with no picture: {body}"
    return "accepted"


# -- generated inputs --------------------------------------------------------------------


@st.composite
def images(draw: st.DrawFn) -> bytes:
    """A small valid JPEG, PNG or WebP: odd sizes, every mode the format stores, EXIF."""
    fmt = draw(st.sampled_from(["JPEG", "PNG", "WEBP"]))
    modes = {
        "JPEG": ["RGB", "L", "CMYK"],
        "PNG": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"],
        "WEBP": ["RGB", "RGBA"],
    }
    mode = draw(st.sampled_from(modes[fmt]))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "I;16":
        levels = rng.integers(0, 2**16, (height, width)).astype("<u2")
        image = Image.frombytes("I;16", (width, height), levels.tobytes())
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8), "RGB")
        image = image.convert(mode)
    options: dict[str, Any] = {}
    if fmt != "PNG" or draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 9))  # orientation, including invalid values
        options["exif"] = exif.tobytes()
    if fmt == "JPEG":
        options.update(quality=draw(st.integers(1, 100)), progressive=draw(st.booleans()))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@functools.cache
def clip(width: int, height: int, frames: int, container: str, faststart: bool,
         rotation: int) -> bytes:  # fmt: skip
    """A tiny valid H.264 clip (cached: encoding is the slow part of a case)."""
    options = {"movflags": "faststart"} if faststart else {}
    rng = np.random.default_rng(width * 1000 + height * 10 + frames)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clip.{container}"
        with av.open(str(path), "w", format=container, options=options) as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            stream.time_base = Fraction(1, 12800)
            stream.options = {"preset": "ultrafast"}
            if rotation:
                stream.set_display_rotation(rotation)
            for index in range(frames):
                rgb = rng.integers(0, 256, (height, width, 3), np.uint8)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = index * 512, Fraction(1, 12800)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        return path.read_bytes()


@st.composite
def clips(draw: st.DrawFn) -> bytes:
    width, height = draw(st.sampled_from([(16, 16), (17, 9), (32, 18), (2, 2)]))
    return clip(
        width,
        height,
        draw(st.sampled_from([1, 2, 5])),
        draw(st.sampled_from(["mp4", "mov"])),
        draw(st.booleans()),
        draw(st.sampled_from([0, 90])),
    )


def _oversize(draw: st.DrawFn, data: bytearray) -> bytearray:
    """Past the upload limit: the stream must be cut off and nothing kept."""
    limit = MAX_UPLOAD_MB * 2**20
    return data + bytearray(limit + draw(st.integers(1, 4096)) - len(data))


@st.composite
def mutated_media(draw: st.DrawFn) -> bytes:
    """A valid image or clip with up to three edits (``tests/fuzzing.py``'s, which the
    protect fuzz uses too); one in a hundred is made too large to upload."""
    data, _ = draw(mutated(draw(st.one_of(images(), clips())), most=3))
    if draw(st.integers(0, 99)) == 0:
        data = bytes(_oversize(draw, bytearray(data)))
    return data


def raw_bytes() -> st.SearchStrategy[bytes]:
    """Tiny and odd inputs: a few bytes, or a magic followed by noise."""
    tiny = st.binary(max_size=64)
    behind_magic = st.tuples(st.sampled_from(MAGICS), st.binary(max_size=512)).map(
        lambda parts: parts[0] + parts[1]
    )
    return st.one_of(tiny, behind_magic)


def names() -> st.SearchStrategy[str]:
    printable = st.text(st.characters(blacklist_categories=["Cs"]), max_size=300)
    return st.one_of(st.sampled_from(ODD_NAMES), printable)


def upload_cases() -> st.SearchStrategy[tuple[bytes, str]]:
    """(bytes, file name): mostly mutated media, some raw bytes."""
    data = st.one_of(mutated_media(), mutated_media(), mutated_media(), raw_bytes())
    return st.tuples(data, names())


# -- the run -----------------------------------------------------------------------------


def run(
    cases: int, random_seed: int = 0, limit_s: float = 30.0, save: Path | None = None
) -> tuple[Counter, list[str]]:
    """``cases`` generated uploads: the count of each outcome, and a line per crash (its
    input saved under ``save`` as ``crash-N.bin`` when given). ``decoder:<error>`` counts
    refusals that came from a decoder raising something unexpected (logged by the app,
    counted here instead): not crashes, but bugs of the decoding code they went through."""
    counts: Counter = Counter()
    crashes: list[str] = []
    decoder_log = logging.getLogger("deepguard.web.media")
    counter = _DecoderErrors(counts)
    decoder_log.addHandler(counter)
    decoder_log.propagate = False
    with tempfile.TemporaryDirectory(prefix="deepguard-fuzz-") as folder, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # corrupt EXIF …
        client = make_client(Path(folder))

        @seed(random_seed)
        @settings(
            max_examples=cases,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=upload_cases())
        def one(case: tuple[bytes, str]) -> None:
            data, name = case
            outcome = fuzz_upload_case(client, data, name, limit_s)
            counts["cases"] += 1
            counts[outcome.split(":", 1)[0]] += 1
            if outcome.startswith("crash"):
                crashes.append(f"{outcome} [{len(data)} bytes, head {data[:24]!r}, {name!r:.60}]")
                if save:
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"crash-{len(crashes)}.bin").write_bytes(data)

        try:
            one()
        finally:
            decoder_log.removeHandler(counter)
            decoder_log.propagate = True
    return counts, crashes


class _DecoderErrors(logging.Handler):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        kind = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else "?"
        self.counts[f"decoder:{kind}"] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-s", type=float, default=30.0, help="a case past this hangs")
    parser.add_argument("--save", type=Path, help="folder for the inputs that crashed")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    counts, crashes = run(args.cases, args.seed, args.limit_s, args.save)
    for line in crashes:
        print(line)
    for key, count in sorted(counts.items()):
        if key.startswith("decoder:"):
            print(f"refused after a decoder raised {key.split(':', 1)[1]}: {count}")
    print(
        f"upload: {counts['cases']} cases, {counts['refused']} clean refusals, "
        f"{counts['accepted']} successes, {counts['crash']} crashes "
        f"({time.perf_counter() - started:.0f} s, seed {args.seed})"
    )
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
