"""Delivery: the copies of a protected picture that a face-swap tool really gets.

A press photo rarely reaches roop as we wrote it. It is saved from a news page or a social
network that resized it with an antialiased filter and re-encoded it as JPEG; then the tool
resizes it again (``../shared/docs/field-notes.md``). A *chain* names one such path from our
file to the tool. The check runs each chain for real (OpenCV's area resize, libjpeg through
Pillow); the attack optimises through a differentiable model of the same chain, with its
settings drawn at random around the real ones (:class:`ChainModel`).

Chains:
- ``saved``: the written file as it is;
- ``q75``: the file re-compressed as JPEG q75 (4:2:0);
- ``sns``: long side to 1080 with area averaging, JPEG q80 4:2:0 (Instagram);
- ``sns2048``: long side to 2048 with area averaging, JPEG q85 4:2:0 (Facebook, X).
Platforms only shrink: a picture smaller than the chain's side keeps its size and is only
re-encoded.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from deepguard.attack.transforms import jpeg_roundtrip
from deepguard.errors import DeepguardError

#: Pillow's ``subsampling`` codes, by name
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


#: OpenCV's interpolation for each way a chain may resize
_CV2_FILTERS = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR}


@dataclass(frozen=True)
class Chain:
    """One path from the written file to a tool: an optional downscale (never up) to
    ``long_side`` or by ``factor``, with ``method`` (a platform's area averaging by default),
    then an optional JPEG re-encode at ``quality`` with 4:2:0 chroma."""

    name: str
    title: str
    long_side: int | None = None
    quality: int | None = None
    factor: float | None = None
    method: str = "area"

    def scale(self, height: int, width: int) -> float:
        """The factor the chain shrinks a ``height``×``width`` picture by (1: none)."""
        if self.factor is not None:
            return min(1.0, self.factor)
        if self.long_side is None or max(height, width) <= self.long_side:
            return 1.0
        return self.long_side / max(height, width)

    @property
    def identity(self) -> bool:
        """The file as it is (no resize, no re-encode)."""
        return self.long_side is None and self.factor is None and self.quality is None

    def size(self, height: int, width: int) -> tuple[int, int]:
        """The delivered copy's (height, width)."""
        scale = self.scale(height, width)
        if scale == 1.0:
            return height, width
        return max(1, round(height * scale)), max(1, round(width * scale))

    def deliver(self, frames: np.ndarray) -> np.ndarray:
        """The real chain on N×H×W×3 uint8 frames (the saved file's pixels)."""
        out = []
        for frame in frames:
            height, width = self.size(*frame.shape[:2])
            if (height, width) != frame.shape[:2]:
                method = _CV2_FILTERS[self.method]
                frame = cv2.resize(frame, (width, height), interpolation=method)
            if self.quality is not None:
                frame = jpeg_uint8(frame, self.quality, "4:2:0")
            out.append(frame)
        return np.stack(out)


CHAINS: dict[str, Chain] = {
    chain.name: chain
    for chain in (
        Chain("saved", "the written file"),
        Chain("q75", "re-compressed as JPEG q75", quality=75),
        Chain("sns", "shared: 1080 px, area, JPEG q80", long_side=1080, quality=80),
        Chain("sns2048", "shared: 2048 px, area, JPEG q85", long_side=2048, quality=85),
    )
}
DEFAULT_DELIVERY = ("saved", "sns")


def parse_chains(names: str | Iterable[str]) -> tuple[Chain, ...]:
    """``"saved,sns"`` (or a list of names) → the chains, in that order, without repeats."""
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    chosen = list(dict.fromkeys(names))
    unknown = [name for name in chosen if name not in CHAINS]
    if unknown or not chosen:
        raise DeepguardError(
            f"unknown delivery chain(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(CHAINS)}"
        )
    return tuple(CHAINS[name] for name in chosen)


def jpeg_uint8(frame: np.ndarray, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    """One H×W×3 uint8 frame through libjpeg (Pillow) and back."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(
        buffer, "JPEG", quality=quality, subsampling=SUBSAMPLING[subsampling]
    )
    return np.asarray(Image.open(buffer).convert("RGB"))


# -- the differentiable model the attack optimises through --------------------------------

#: how platforms and tools resize, as torch can do it differentiably: OpenCV's and Pillow's
#: bilinear (no antialiasing: what ``cv2.resize`` does by default), area averaging, bicubic,
#: and the antialiased filters of Pillow (bilinear, bicubic; Lanczos is nearest to the latter)
TOOL_FILTERS = ("bilinear", "area", "bicubic", "bicubic-aa")
PLATFORM_FILTERS = ("area", "bilinear-aa", "bicubic-aa")


def resize_to(x: Tensor, size: tuple[int, int], method: str) -> Tensor:
    """``x`` (N×3×H×W) resized to ``size`` with one of :data:`TOOL_FILTERS` or
    :data:`PLATFORM_FILTERS`."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if method == "area":
        shrinking = size[0] <= x.shape[-2] and size[1] <= x.shape[-1]
        if shrinking:
            return F.interpolate(x, size=size, mode="area")
        method = "bilinear"  # OpenCV's INTER_AREA is bilinear when enlarging
    mode, _, antialias = method.partition("-")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=bool(antialias))


@dataclass(frozen=True)
class OutputCodec:
    """How the output file is saved, as the attack models it: JPEG at ``quality`` with
    ``subsampling`` chroma (``None`` quality: a lossless file)."""

    quality: int | None
    subsampling: str = "4:2:0"


class ChainModel:
    """Random, differentiable versions of the chains, for the attack's expectation over
    transformations.

    First the saved file: the output's own ``codec`` when the caller knows it (a photo's
    JPEG), else, on a share ``probability`` of draws, a JPEG at a quality drawn from
    ``jpeg_range`` (a clip, whose real codec the caller applies straight through). A platform
    chain then downscales to its long side jittered by ``size_jitter``, with a filter drawn
    from :data:`PLATFORM_FILTERS`, and re-encodes as JPEG 4:2:0 at its quality ±
    ``quality_jitter``.
    """

    def __init__(
        self,
        codec: OutputCodec | None,
        jpeg_range: tuple[int, int] | None,
        probability: float,
        rng: random.Random,
        size_jitter: float = 0.1,
        quality_jitter: int = 8,
    ) -> None:
        self.codec = codec
        self.jpeg_range = jpeg_range
        self.probability = probability
        self.rng = rng
        self.size_jitter = size_jitter
        self.quality_jitter = quality_jitter

    def __call__(self, x: Tensor, chain: Chain) -> Tensor:
        rng = self.rng
        if self.codec is not None:
            if self.codec.quality is not None:
                x = jpeg_roundtrip(x, self.codec.quality, self.codec.subsampling)
        elif self.jpeg_range and rng.random() < self.probability:
            x = jpeg_roundtrip(x, rng.randint(*self.jpeg_range), "4:2:0")
        height, width = x.shape[-2:]
        nominal = chain.scale(height, width)
        if nominal < 1.0:
            jitter = rng.uniform(1 - self.size_jitter, 1 + self.size_jitter)
            scale = min(1.0, nominal * jitter)
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            x = resize_to(x, size, rng.choice(PLATFORM_FILTERS))
        if chain.quality is not None:
            low = max(10, chain.quality - self.quality_jitter)
            high = min(100, chain.quality + self.quality_jitter)
            x = jpeg_roundtrip(x, rng.randint(low, high), "4:2:0")
        return x


@dataclass(frozen=True)
class ViewGeometry:
    """How a tool's view maps back to the picture it was made from:
    ``view = (picture - offset) * scale + pad`` per axis (x, y)."""

    scale_x: float
    scale_y: float
    offset_x: int = 0
    offset_y: int = 0
    pad_x: int = 0
    pad_y: int = 0

    def boxes_to_view(self, boxes: np.ndarray) -> np.ndarray:
        """K×4 xyxy picture pixels → view pixels."""
        scale = np.array([self.scale_x, self.scale_y] * 2, np.float32)
        offset = np.array([self.offset_x, self.offset_y] * 2, np.float32)
        pad = np.array([self.pad_x, self.pad_y] * 2, np.float32)
        return (boxes - offset) * scale + pad


class ToolResize:
    """A tool's resize, randomised around what the tool does so that the perturbation does
    not live on one sampling grid: the scale jittered by ``scale_jitter``, the filter drawn
    from :data:`TOOL_FILTERS` (plain bilinear, the tools' own, half of the time), the picture
    cropped by a few pixels at the top left (another sampling phase) and padded at the top
    left by up to one stride (another anchor grid, as a centred letterbox gives)."""

    def __init__(
        self,
        rng: random.Random,
        scale_jitter: float = 0.1,
        pad: int = 32,
        filter_mix: float = 0.5,
    ) -> None:
        self.rng = rng
        self.scale_jitter = scale_jitter
        self.pad = pad
        self.filter_mix = filter_mix

    def __call__(self, x: Tensor, scale: float) -> tuple[Tensor, ViewGeometry]:
        rng = self.rng
        height, width = x.shape[-2:]
        if rng.random() < 0.5:  # half of the draws at the tool's own scale
            scale = scale * rng.uniform(1 - self.scale_jitter, 1 + self.scale_jitter)
        phase = max(1, round(1 / scale)) if scale < 1 else 1
        offset_x, offset_y = rng.randrange(phase), rng.randrange(phase)
        x = x[..., offset_y:, offset_x:]
        size = (max(1, int((height - offset_y) * scale)), max(1, int((width - offset_x) * scale)))
        method = rng.choice(TOOL_FILTERS) if rng.random() < self.filter_mix else "bilinear"
        view = resize_to(x, size, method)
        pad_x = rng.randrange(self.pad) if self.pad and rng.random() < 0.5 else 0
        pad_y = rng.randrange(self.pad) if self.pad and rng.random() < 0.5 else 0
        if pad_x or pad_y:
            view = F.pad(view, (pad_x, 0, pad_y, 0))
        geometry = ViewGeometry(
            size[1] / max(1, width - offset_x),
            size[0] / max(1, height - offset_y),
            offset_x,
            offset_y,
            pad_x,
            pad_y,
        )
        return view, geometry


def exact_view(x: Tensor, size: tuple[int, int]) -> tuple[Tensor, ViewGeometry]:
    """The tool's own resize, exactly: ``cv2.resize`` bilinear without antialiasing."""
    height, width = x.shape[-2:]
    view = resize_to(x, size, "bilinear")
    return view, ViewGeometry(size[1] / width, size[0] / height)


def describe(chains: Sequence[Chain]) -> str:
    """For reports: "saved, sns"."""
    return ", ".join(chain.name for chain in chains)
