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
import struct
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

with warnings.catch_warnings():  # Starlette asks for httpx2; the client works as before
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

#: the upload limit while fuzzing: small, so oversized bodies are cheap to make
MAX_UPLOAD_MB = 1
OCTETS = {"content-type": "application/octet-stream"}
#: the first bytes of formats we take and of some we do not
MAGICS = (
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"\x89PNG\r\n\x1a\n",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"\x00\x00\x00\x18ftypisom",
    b"\x00\x00\x00\x14ftypqt  ",
    b"\x00\x00\x00\x08moov",
    b"\x00\x00\x00\x08mdat",
    b"\x00\x00\x00\x08wide",
    b"GIF89a",
    b"BM",
    b"%PDF-1.7",
    b"\x7fELF",
    b"PK\x03\x04",
)
#: sizes a header may claim: nothing, one, 16-bit and 32-bit extremes
HUGE = (0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)
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


def _noise(draw: st.DrawFn, size: int) -> bytes:
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).bytes(size)


def _truncate(draw: st.DrawFn, data: bytearray) -> bytearray:
    return data[: draw(st.integers(0, len(data)))]


def _flip_bits(draw: st.DrawFn, data: bytearray) -> bytearray:
    for _ in range(draw(st.integers(1, 16)) if data else 0):
        position = draw(st.integers(0, len(data) - 1))
        data[position] ^= 1 << draw(st.integers(0, 7))
    return data


def _overwrite(draw: st.DrawFn, data: bytearray) -> bytearray:
    start = draw(st.integers(0, len(data)))
    length = draw(st.sampled_from([1, 4, 64, 2000]))
    data[start : start + length] = _noise(draw, length)
    return data


def _wrong_magic(draw: st.DrawFn, data: bytearray) -> bytearray:
    magic = draw(st.sampled_from(MAGICS))
    return bytearray(magic) + data[len(magic) :]


def _insert(draw: st.DrawFn, data: bytearray) -> bytearray:
    position = draw(st.integers(0, len(data)))
    return data[:position] + _noise(draw, draw(st.integers(1, 512))) + data[position:]


def _append(draw: st.DrawFn, data: bytearray) -> bytearray:
    return data + _noise(draw, draw(st.integers(1, 4096)))


def _huge_header(draw: st.DrawFn, data: bytearray) -> bytearray:
    """A header field that claims a huge (or zero) size: picture size, box or chunk length."""
    value = draw(st.sampled_from(HUGE))
    places = []
    if data[12:16] == b"IHDR":  # PNG width, height
        places += [(16, ">I"), (20, ">I")]
    for marker in (b"\xff\xc0", b"\xff\xc2"):  # JPEG start of frame: height, width
        at = data.find(marker)
        if at >= 0:
            places += [(at + 5, ">H"), (at + 7, ">H")]
    if data[:4] == b"RIFF":  # WebP: the RIFF and first chunk lengths
        places += [(4, "<I"), (16, "<I")]
    for box in (b"moov", b"mdat", b"trak", b"stsz", b"stco", b"avc1", b"tkhd", b"ftyp"):
        at = data.find(box)
        if at >= 4:  # the box's length is the 4 bytes before its type
            places.append((at - 4, ">I"))
        if box == b"avc1" and at >= 0:  # the sample entry's width and height
            places += [(at + 28, ">H"), (at + 30, ">H")]
        if box == b"stsz" and at >= 0:  # the number of samples
            places.append((at + 12, ">I"))
    places = [(at, fmt) for at, fmt in places if at + struct.calcsize(fmt) <= len(data)]
    if not places:
        return data
    at, fmt = draw(st.sampled_from(places))
    limit = 2 ** (8 * struct.calcsize(fmt)) - 1
    struct.pack_into(fmt, data, at, min(value, limit))
    return data


def _oversize(draw: st.DrawFn, data: bytearray) -> bytearray:
    """Past the upload limit: the stream must be cut off and nothing kept."""
    limit = MAX_UPLOAD_MB * 2**20
    return data + bytearray(limit + draw(st.integers(1, 4096)) - len(data))


MUTATIONS = (_truncate, _flip_bits, _overwrite, _wrong_magic, _insert, _append, _huge_header)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid image or clip with zero to three mutations (truncation the likeliest)."""
    data = bytearray(draw(st.one_of(images(), clips())))
    count = draw(st.integers(0, 3))
    for _ in range(count):
        mutation = draw(st.sampled_from(MUTATIONS + (_truncate,) * 3))
        data = mutation(draw, data)
    if draw(st.integers(0, 99)) == 0:
        data = _oversize(draw, data)
    return bytes(data)


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
    data = st.one_of(mutated(), mutated(), mutated(), raw_bytes())
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
