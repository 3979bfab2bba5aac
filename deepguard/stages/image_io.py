"""Still images in and out: the decode and remux stages for a one-frame "video".

Reading applies EXIF orientation, splits off alpha, and refuses what we cannot protect
faithfully (16-bit or CMYK pixels, decompression bombs, non-images) with a clear message.
Writing keeps size, alpha and colour profile, strips EXIF/GPS unless asked to keep it, and
lands atomically.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from deepguard.errors import InputError

log = logging.getLogger(__name__)

READ_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
WRITE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
IMAGE_SUFFIXES = frozenset(WRITE_FORMATS)
#: the longest side each output format can hold (libjpeg's and libwebp's limits)
MAX_SIDE = {"JPEG": 65_500, "PNG": 2**31 - 1, "WEBP": 16_383}
JPEG_MAX_SIDE = MAX_SIDE["JPEG"]
# Pillow's own decompression-bomb guard is a fixed 89 M pixels, reported as an unreadable
# file. read_image checks every image against DEEPGUARD_MAX_IMAGE_PIXELS itself, from the
# header and before any pixel is decoded, and says so.
Image.MAX_IMAGE_PIXELS = None


@dataclass
class StillImage:
    """Decoded pixels plus what must be carried to the output untouched."""

    rgb: np.ndarray  # H×W×3 uint8, orientation applied
    alpha: np.ndarray | None  # H×W uint8, or None
    format: str  # JPEG / PNG / WEBP
    exif: bytes | None
    icc_profile: bytes | None
    #: the chroma subsampling a JPEG output is written with: the input's own when it is a
    #: JPEG, else 4:2:0, what cameras and platforms write (and what the check then sees)
    subsampling: str = "4:2:0"


def _png_bit_depth(path: Path) -> int | None:
    with path.open("rb") as handle:
        header = handle.read(26)
    if header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR":
        return header[24]
    return None


def read_image(path: Path, max_pixels: int) -> StillImage:
    """Decode an image file for protection, or raise :class:`InputError` saying why not.

    Pillow's warnings about a damaged file (EXIF tags that point past its end, …) go to the
    debug log: the user reads the one line that matters, not the decoder's notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _read_image(path, max_pixels)
        finally:
            for warning in caught:
                log.debug("%s: %s", path.name, warning.message)


def _read_image(path: Path, max_pixels: int) -> StillImage:
    try:
        image = Image.open(path)
        if image.format not in READ_FORMATS:
            raise InputError(
                f"{path.name}: {image.format} images are not supported; use JPEG, PNG or WebP"
            )
        width, height = image.size
        if width * height > max_pixels:
            raise InputError(
                f"{path.name}: {width}×{height} pixels exceeds the limit of {max_pixels:,} "
                f"(DEEPGUARD_MAX_IMAGE_PIXELS)"
            )
        if max(width, height) > JPEG_MAX_SIDE:
            raise InputError(
                f"{path.name}: {width}×{height} pixels: sides over {JPEG_MAX_SIDE:,} are not "
                f"supported (every result is verified as a JPEG, which stops there)"
            )
        if image.mode == "CMYK":
            raise InputError(f"{path.name}: CMYK images are not supported; convert to RGB")
        if image.mode.startswith(("I", "F")) or _png_bit_depth(path) == 16:
            raise InputError(
                f"{path.name}: 16-bit or floating-point images are not supported; "
                f"save as 8 bits per channel"
            )
        image.load()
        source_format = str(image.format)
        subsampling = _subsampling(image)
        exif = image.info.get("exif")
        icc = image.info.get("icc_profile")
        image = ImageOps.exif_transpose(image)
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{path.name}: not a readable image") from None
    except OSError as error:
        if error.errno is not None:  # the file system refused (permissions), not the decoder
            raise InputError(f"{path.name}: cannot read ({error.strerror})") from None
        raise InputError(f"{path.name}: corrupt or truncated image ({error})") from None
    except (SyntaxError, ValueError, EOFError, struct.error) as error:  # Pillow's parse errors
        raise InputError(f"{path.name}: corrupt image ({error})") from None
    return StillImage(
        rgb=np.ascontiguousarray(pixels[:, :, :3]),
        alpha=np.ascontiguousarray(pixels[:, :, 3]) if has_alpha else None,
        format=source_format,
        exif=exif,
        icc_profile=icc,
        subsampling=subsampling,
    )


#: Pillow's code for a JPEG's chroma subsampling → its name
_SAMPLINGS = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def _subsampling(image: Image.Image) -> str:
    """A JPEG input's chroma subsampling (4:2:0 for other formats or an unusual layout)."""
    if image.format != "JPEG":
        return "4:2:0"
    return _SAMPLINGS.get(JpegImagePlugin.get_sampling(image), "4:2:0")


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in WRITE_FORMATS:
        raise InputError(
            f"{path.name}: cannot write {suffix or 'files without an extension'}; "
            f"use .jpg, .png or .webp"
        )
    return WRITE_FORMATS[suffix]


def encode_image(
    still: StillImage, rgb: np.ndarray, fmt: str, jpeg_quality: int, keep_metadata: bool
) -> bytes:
    """The protected pixels, encoded as they will be saved."""
    if still.alpha is not None and fmt == "JPEG":
        raise InputError("JPEG cannot store transparency; save the result as .png or .webp")
    pixels = rgb if still.alpha is None else np.dstack([rgb, still.alpha])
    image = Image.fromarray(pixels, "RGB" if still.alpha is None else "RGBA")
    options: dict[str, object] = {}
    if still.icc_profile:
        options["icc_profile"] = still.icc_profile
    if keep_metadata and still.exif:
        exif = Image.Exif()
        exif.load(still.exif)
        exif[0x0112] = 1  # orientation is already applied to the pixels
        options["exif"] = exif.tobytes()
    if fmt == "JPEG":
        options.update(quality=jpeg_quality, subsampling=still.subsampling)
    elif fmt == "WEBP":
        options.update(lossless=True, quality=100)
    elif fmt == "PNG":
        options.update(compress_level=6)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
