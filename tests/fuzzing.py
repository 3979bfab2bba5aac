"""Fuzzing ``deepguard protect``: Hypothesis strategies for bad inputs, and a judge of what
the command did with each.

A case is a file (real media from ../shared, mutated: truncated, bit-flipped, wrong magic,
huge header fields, or a generated tiny or odd image) or something that is not a regular
file (a FIFO, a socket, a device, a folder). :func:`run_protect_case` runs the CLI's entry
function on it in this process and says how it ended: a success (exit 0 and the output), a
clean refusal (exit 2 and one line per refused file), or a failure: a crash (a traceback,
any other exit code, a bug reported from a Ray worker, a refusal that is not one line per
file, anything printed on a quiet success), a hang past the limit, or a file left behind.

``tests/test_fuzz_protect.py`` runs a small derandomized sample; ``bench/fuzz.py`` the long
run that prints the counts.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image

#: a real but cheap attack: successes take the whole path (decode, attack, encode, verify)
CHEAP_ATTACK = ["-q", "--detectors", "yunet", "--tools", "none", "--iterations", "1", "--seed", "0"]


#: how the video pipeline reports an unexpected exception in a Ray worker: a bug, not a refusal
BUGS_IN_WORKERS = ("a pipeline stage failed", "a pipeline worker died")


class Kind(StrEnum):
    SUCCESS = "success"
    REFUSAL = "refusal"
    CRASH = "crash"
    HANG = "hang"
    LEFTOVER = "leftover"


@dataclass(frozen=True)
class Outcome:
    """How one case ended; ``detail`` says what went wrong (or the refusal's line)."""

    kind: Kind
    detail: str = ""

    @property
    def clean(self) -> bool:
        return self.kind in (Kind.SUCCESS, Kind.REFUSAL)


@dataclass
class Counts:
    """Outcomes of a run, with the first few failures kept to show."""

    by_kind: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    keep: int = 20

    @property
    def cases(self) -> int:
        return sum(self.by_kind.values())

    @property
    def crashes(self) -> int:
        """Everything that is neither a success nor a clean refusal."""
        return self.cases - self.by_kind[Kind.SUCCESS] - self.by_kind[Kind.REFUSAL]

    def add(self, outcome: Outcome, case: object) -> None:
        self.by_kind[outcome.kind] += 1
        if not outcome.clean and len(self.failures) < self.keep:
            self.failures.append(f"{outcome.kind}: {outcome.detail} <- {case}")

    def lines(self) -> list[str]:
        k = self.by_kind
        return [
            f"cases            {self.cases}",
            f"clean refusals   {k[Kind.REFUSAL]}",
            f"successes        {k[Kind.SUCCESS]}",
            f"crashes          {self.crashes} (tracebacks or other exit codes {k[Kind.CRASH]}, "
            f"hangs {k[Kind.HANG]}, files left behind {k[Kind.LEFTOVER]})",
        ]


# -- cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileCase:
    """A regular file with these bytes and this name."""

    name: str
    data: bytes
    origin: str  # how it was made, to read in a report
    in_folder: bool = False  # protect its folder instead (with a FIFO beside it)

    def __str__(self) -> str:
        where = " in a folder" if self.in_folder else ""
        return f"{self.name} ({len(self.data)} bytes, {self.origin}){where}"


@dataclass(frozen=True)
class SpecialCase:
    """Something at ``name`` that is not a regular file."""

    name: str
    kind: str  # see SPECIAL_KINDS
    in_folder: bool = False

    def __str__(self) -> str:
        return f"{self.name} ({self.kind}){' in a folder' if self.in_folder else ''}"


SPECIAL_KINDS = ("fifo", "socket", "dev-null", "dev-zero", "folder", "dangling-link", "link-loop",
                 "link-to-fifo")  # fmt: skip
Case = FileCase | SpecialCase


def _make_special(path: Path, kind: str) -> socket.socket | None:
    """Create ``kind`` at ``path``; a socket is returned to be closed after the case."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        return server
    elif kind in ("dev-null", "dev-zero"):
        path.symlink_to(f"/dev/{kind[4:]}")
    elif kind == "folder":
        path.mkdir()
        (path / "inside.jpg").write_bytes(b"\xff\xd8\xff")
    elif kind == "dangling-link":
        path.symlink_to(path.with_name("missing.jpg"))
    elif kind == "link-loop":
        path.symlink_to(path)
    elif kind == "link-to-fifo":
        os.mkfifo(path.with_name("fifo"))
        path.symlink_to(path.with_name("fifo"))
    return None


# -- seeds: small real media, made in memory -----------------------------------------------


def image_seeds(media_dir: Path, side: int = 40) -> dict[str, bytes]:
    """A downscaled real portrait in every form ``protect`` reads (name → bytes)."""
    portrait = Image.open(media_dir / "lp_s0.jpg").convert("RGB")
    portrait.thumbnail((side, side))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate to display
    exif.get_ifd(0x8825)[1] = "N"  # GPS
    forms: dict[str, tuple[Image.Image, str, dict]] = {
        "portrait.jpg": (portrait, "JPEG", {"quality": 90, "exif": exif.tobytes()}),
        "progressive.jpg": (portrait, "JPEG", {"quality": 80, "progressive": True}),
        "grey.jpg": (portrait.convert("L"), "JPEG", {"quality": 90}),
        "portrait.png": (portrait, "PNG", {}),
        "alpha.png": (portrait.convert("RGBA"), "PNG", {}),
        "palette.png": (portrait.convert("P"), "PNG", {}),
        "lossy.webp": (portrait, "WEBP", {"quality": 80}),
        "lossless.webp": (portrait.convert("RGBA"), "WEBP", {"lossless": True}),
    }
    seeds = {}
    for name, (image, fmt, options) in forms.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        seeds[name] = buffer.getvalue()
    return seeds


def clip_seeds(videos_dir: Path, work: Path) -> dict[str, bytes]:
    """Short real clips: an mp4 with audio, a mov without, and an odd-sized mp4."""
    from tests.media import make_clip

    source = videos_dir / "lp_d11.mp4"
    work.mkdir(parents=True, exist_ok=True)
    clips = {
        "talk.mp4": make_clip(source, work / "talk.mp4", 3, size=(48, 48)),
        "talk.mov": make_clip(source, work / "talk.mov", 2, size=(32, 48), audio=False),
        "odd.mp4": make_clip(source, work / "odd.mp4", 2, size=(33, 17), pix_fmt="yuv444p"),
    }
    return {name: path.read_bytes() for name, path in clips.items()}


# -- mutations -----------------------------------------------------------------------------

#: the first bytes of formats we take and of some we do not
MAGICS = [b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\x89PNG\r\n\x1a\n",
          b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"GIF89a", b"BM", b"II*\x00", b"%PDF-1.7",
          b"PK\x03\x04", b"\x7fELF", b"\x00\x00\x00\x20ftypisom", b"\x00\x00\x00\x14ftypqt  ",
          b"\x00\x00\x00\x08moov", b"\x00\x00\x00\x08mdat", b"\x1a\x45\xdf\xa3",
          b"\x00" * 16, b""]  # fmt: skip
#: sizes a header may claim: nothing, one, 8-, 16- and 32-bit extremes, JPEG's limit
EXTREMES = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 30000, 65500, 0x7FFFFFFF, 0xFFFFFFFF]
#: ISO-BMFF boxes whose size fields a clip's reader trusts
BOXES = [b"ftyp", b"moov", b"mvhd", b"trak", b"tkhd", b"mdia", b"mdhd", b"stbl", b"stsd",
         b"avc1", b"avcC", b"stts", b"stsz", b"stco", b"stss", b"mdat", b"mp4a"]  # fmt: skip
#: the edits :func:`mutated` draws from
EDITS = ["truncate", "flip", "set", "overwrite", "insert", "delete", "append", "magic", "field",
         "header", "repeat", "box"]  # fmt: skip


def _position(draw, data: bytearray) -> int:
    """Anywhere, but often in the header, where parsers are most fragile."""
    size = max(1, len(data))
    return draw(st.one_of(st.integers(0, min(size - 1, 96)), st.integers(0, size - 1)))


def _noise(draw, size: int) -> bytes:
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).bytes(size)


def header_fields(data: bytes | bytearray) -> list[tuple[int, str]]:
    """Where a picture's or clip's header states a size: (offset, struct format) of PNG's
    width and height, JPEG's frame size, WebP's RIFF and chunk lengths, and an MP4's box
    lengths, sample entry size and sample count."""
    places = []
    if data[12:16] == b"IHDR":
        places += [(16, ">I"), (20, ">I")]
    for marker in (b"\xff\xc0", b"\xff\xc2"):  # JPEG start of frame: height, width
        at = data.find(marker)
        if at >= 0:
            places += [(at + 5, ">H"), (at + 7, ">H")]
    if data[:4] == b"RIFF":
        places += [(4, "<I"), (16, "<I")]
    for box in BOXES:
        at = data.find(box)
        if at >= 4:  # the box's length is the 4 bytes before its type
            places.append((at - 4, ">I"))
        if box == b"avc1" and at >= 0:
            places += [(at + 28, ">H"), (at + 30, ">H")]
        if box == b"stsz" and at >= 0:
            places.append((at + 12, ">I"))
    return [(at, fmt) for at, fmt in places if at + struct.calcsize(fmt) <= len(data)]


@st.composite
def mutated(draw, data: bytes, most: int = 4) -> tuple[bytes, str]:
    """``data`` changed by up to ``most`` random edits (:data:`EDITS`: cut, bit flips, noise
    over or into it, another format's magic, a huge or zero size in a header field, ...);
    returns the bytes and what was done. Both fuzz targets (protect and the upload API)
    mutate their inputs with it."""
    data, done = bytearray(data), []
    for _ in range(draw(st.integers(0, most))):
        op = draw(st.sampled_from(EDITS))
        pos = _position(draw, data)
        if op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "flip" and data:
            for _ in range(draw(st.integers(1, 16))):
                data[_position(draw, data)] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "overwrite":
            length = draw(st.sampled_from([1, 4, 64, 2000]))
            data[pos : pos + length] = _noise(draw, length)
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "append":
            data += _noise(draw, draw(st.integers(1, 4096)))
        elif op == "magic":
            data[: draw(st.integers(0, 16))] = draw(st.sampled_from(MAGICS))
        elif op == "field":  # a length or a dimension anywhere, big- or little-endian
            value = draw(st.sampled_from(EXTREMES))
            fmt = draw(st.sampled_from([">H", "<H", ">I", "<I"]))
            packed = struct.pack(fmt, value & (0xFFFF if "H" in fmt else 0xFFFFFFFF))
            data[pos : pos + len(packed)] = packed
        elif op == "header":  # a size the header states, where it states it
            places = header_fields(data)
            if not places:
                continue
            at, fmt = draw(st.sampled_from(places))
            limit = 2 ** (8 * struct.calcsize(fmt)) - 1
            struct.pack_into(fmt, data, at, min(draw(st.sampled_from(EXTREMES)), limit))
            pos = at
        elif op == "repeat" and data:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 256))] * draw(st.integers(1, 8))
        elif op == "box":
            found = [i for box in BOXES if (i := data.find(box)) >= 4]
            if not found:
                continue
            at = draw(st.sampled_from(found))
            data[at - 4 : at] = struct.pack(">I", draw(st.sampled_from(EXTREMES)))
        else:
            continue
        done.append(f"{op}@{pos}")
    return bytes(data), ", ".join(done) or "unchanged"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` (a decompression bomb's header) and whose
    data is a few rows: readers must refuse it from the header alone."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 64)) * 4)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows)
            + _png_chunk(b"IEND", b""))  # fmt: skip


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a JPEG) with its frame header saying ``width``×``height``."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]
    return data


@st.composite
def huge_header(draw, seeds: dict[str, bytes]) -> tuple[str, bytes, str]:
    width = draw(st.sampled_from([30000, 65535, 1, 0, 100_000, 2**31 - 1]))
    height = draw(st.sampled_from([30000, 65535, 1, 0, 3]))
    if draw(st.booleans()):
        return "bomb.png", huge_png(width, height), f"PNG header {width}×{height}"
    jpeg = seeds["portrait.jpg"]
    width, height = min(width, 65535), min(height, 65535)
    return "bomb.jpg", _jpeg_with_size(jpeg, width, height), f"JPEG header {width}×{height}"


IMAGE_MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I", "F", "CMYK", "YCbCr"]
IMAGE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
                 "TIFF": ".tif"}  # fmt: skip


@st.composite
def generated_image(draw) -> tuple[str, bytes, str]:
    """A tiny, odd-sized or oddly shaped image in some mode and format, under some name."""
    sides = st.one_of(st.integers(1, 16), st.sampled_from([1, 2, 10, 11, 12, 31, 33, 400, 1000]))
    width, height = draw(sides), draw(sides)
    mode, fmt = draw(st.sampled_from(IMAGE_MODES)), draw(st.sampled_from(sorted(IMAGE_FORMATS)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt)
    except (OSError, ValueError, KeyError, TypeError):  # this format cannot hold this mode
        fmt, buffer = "PNG", io.BytesIO()
        image.convert("RGB").save(buffer, fmt)
    suffix = draw(st.sampled_from([IMAGE_FORMATS[fmt], ".jpg", ".png", ".webp", ".JPG", ".Jpeg",
                                   ".mp4", ""]))  # fmt: skip
    return f"made{suffix}", buffer.getvalue(), f"{mode} {width}×{height} {fmt}"


@st.composite
def _in_folder(draw) -> bool:
    return draw(st.integers(0, 4)) == 0  # one case in five protects a folder


@st.composite
def file_cases(draw, seeds: dict[str, bytes], generated: bool = True) -> FileCase:
    """A mutated seed (most cases), a huge header or a generated image, as a regular file."""
    choice = draw(st.integers(0, 9)) if generated else 0
    if choice <= 6:
        name = draw(st.sampled_from(sorted(seeds)))
        data, done = draw(mutated(seeds[name]))
        origin = f"{name}: {done}"
        if draw(st.integers(0, 9)) == 0:  # the right bytes under another name
            name = "renamed" + draw(st.sampled_from([".jpg", ".png", ".webp", ".mp4", ".mov"]))
    elif choice <= 7:
        name, data, origin = draw(huge_header(seeds))
    else:
        name, data, origin = draw(generated_image())
    return FileCase(name, data, origin, draw(_in_folder()))


@st.composite
def special_cases(draw, suffixes: list[str]) -> SpecialCase:
    name = "x" + draw(st.sampled_from(suffixes))
    return SpecialCase(name, draw(st.sampled_from(SPECIAL_KINDS)), draw(_in_folder()))


def protect_cases(seeds: dict[str, bytes], generated: bool = True) -> st.SearchStrategy[Case]:
    """Regular files (nine in ten) and other things at a media file's name."""
    suffixes = sorted({Path(name).suffix for name in seeds})
    return st.one_of(
        *[file_cases(seeds, generated)] * 9, special_cases(suffixes)
    )  # one_of picks a branch uniformly


# -- running one case ----------------------------------------------------------------------


class CaseTimeout(BaseException):
    """Raised in the main thread by SIGALRM; a BaseException so no ``except Exception``
    inside the code under test swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (main thread only): a blocking ``open`` of a FIFO
    is interrupted too, since the handler raises. A C library may turn the interrupted call
    into its own error instead, so a block that returns after the alarm raises too."""
    fired = []

    def expire(signum, frame) -> None:
        fired.append(True)
        raise CaseTimeout(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except BaseException as error:  # Ray's C code turns the alarm into a SystemError
        if fired and not isinstance(error, CaseTimeout):
            raise CaseTimeout(f"still running after {seconds:g} s") from error
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if fired:
        raise CaseTimeout(f"ran past {seconds:g} s (interrupted, then returned)")


class _CurrentStderr(io.TextIOBase):
    """Logging's stream: whatever ``sys.stderr`` is when a record is written, so records of
    the code under test are captured with the rest of its stderr."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)


_logging_ready = False


@contextlib.contextmanager
def _descriptors_captured() -> Iterator[list[str]]:
    """What C libraries (libjpeg, FFmpeg) write straight to file descriptors 1 and 2 in the
    block: the user sees that too. The list gets the text when the block ends."""
    text: list[str] = []
    with tempfile.TemporaryFile() as sink:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield text
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text.append(sink.read().decode(errors="replace"))


def call_main(args: list[str], limit_s: float) -> tuple[int | None, str, str | None]:
    """Run the CLI's entry function: (exit code, what it printed, a traceback or timeout)."""
    global _logging_ready
    from deepguard.cli import main

    if not _logging_ready:  # main's basicConfig would bind the first captured stream for good
        logging.basicConfig(stream=_CurrentStderr(), level=logging.WARNING)
        _logging_ready = True
    err, out = io.StringIO(), io.StringIO()
    code, problem = None, None
    with _descriptors_captured() as raw, contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(out):  # fmt: skip
        try:
            with time_limit(limit_s):
                code = main(args)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except CaseTimeout as timeout:
            problem = f"hang: {timeout}"
        except BaseException:
            problem = traceback.format_exc()
    return code, err.getvalue() + raw[0] + out.getvalue(), problem


def _materialise(case: Case, folder: Path) -> tuple[Path, list[socket.socket]]:
    """Lay the case out in ``folder``; returns the path to give ``protect``."""
    folder.mkdir(parents=True)
    path = folder / case.name
    sockets = []
    if isinstance(case, FileCase):
        path.write_bytes(case.data)
    elif (server := _make_special(path, case.kind)) is not None:
        sockets.append(server)
    if case.in_folder:
        os.mkfifo(folder / "beside.jpg")  # a folder's FIFO is refused, not read for ever
        return folder, sockets
    return path, sockets


def run_protect_case(case: Case, work: Path, limit_s: float = 60.0) -> Outcome:
    """Protect ``case`` in the empty folder ``work`` and judge the outcome."""
    inbox, outbox = work / "in", work / "out"
    source, sockets = _materialise(case, inbox)
    before = sorted(p.name for p in inbox.iterdir())
    output = outbox if case.in_folder else outbox / f"result{Path(case.name).suffix}"
    try:
        code, err, problem = call_main(["protect", str(source), "-o", str(output), *CHEAP_ATTACK],
                                       limit_s)  # fmt: skip
    finally:
        for server in sockets:
            server.close()
    lines = err.strip().splitlines()
    if problem:
        kind = Kind.HANG if problem.startswith("hang") else Kind.CRASH
        return Outcome(kind, problem.strip().splitlines()[-1])
    if "Traceback" in err:
        return Outcome(Kind.CRASH, err.strip().splitlines()[-1])
    if code not in (0, 2):
        return Outcome(Kind.CRASH, f"exit code {code}: {lines[-1] if lines else ''}")
    if code == 2 and (not lines or any(not ln.startswith("deepguard: error: ") for ln in lines)):
        return Outcome(Kind.CRASH, f"refused without one clear line per file: {err!r}")
    if code == 0 and lines:  # -q: a success prints nothing
        return Outcome(Kind.CRASH, f"printed on a success: {err!r}")
    if any(bug in err for bug in BUGS_IN_WORKERS):
        return Outcome(
            Kind.CRASH, next(ln for ln in lines if any(b in ln for b in BUGS_IN_WORKERS))
        )
    written = sorted(p.name for p in outbox.iterdir()) if outbox.is_dir() else []
    inputs = {p for p in before if (inbox / p).is_file() and not (inbox / p).is_symlink()}
    allowed = inputs if case.in_folder else {output.name} if code == 0 else set()
    if set(written) - allowed or sorted(p.name for p in inbox.iterdir()) != before:
        return Outcome(Kind.LEFTOVER, f"exit {code}; out: {written}; in: {os.listdir(inbox)}")
    if code == 0 and not case.in_folder and not output.stat().st_size:
        return Outcome(Kind.CRASH, "exit 0 with an empty output")
    return Outcome(Kind.SUCCESS if code == 0 else Kind.REFUSAL, lines[-1] if lines else "")


def fresh_folder(root: Path) -> Path:
    """An empty folder under ``root`` for one case (the last case's is removed)."""
    work = root / "case"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def run_cases(
    strategy: st.SearchStrategy[Case],
    run: Callable[[Case], Outcome],
    cases: int,
    seed: int | None = None,
    on_case: Callable[[Counts], None] | None = None,
) -> Counts:
    """Draw ``cases`` cases with Hypothesis and run each; never stops at a failure (the
    counts are the result). ``seed`` makes the run repeatable."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    counts = Counts()

    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=strategy)
    def each(case: Case) -> None:
        counts.add(run(case), case)
        if on_case:
            on_case(counts)

    if seed is not None:
        each = hypothesis_seed(seed)(each)
    each()
    return counts
