"""Differentiable stand-ins for what happens to a protected picture after we hand it over.

The attack optimises through these (expectation over transformations), so the perturbation
survives the uint8 rounding of the saved file, JPEG re-compression and mild resizing.
Rounding uses a straight-through estimator; JPEG is simulated faithfully (YCbCr, 4:2:0 chroma,
8×8 DCT, the standard quantisation tables scaled by quality) with straight-through rounding
of the coefficients.
"""

from __future__ import annotations

import math
import random
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor


def round_ste(x: Tensor) -> Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def quantize_uint8(x: Tensor) -> Tensor:
    """What saving as 8-bit does to a 0..255 tensor, with a straight-through gradient."""
    return round_ste(x.clamp(0, 255))


# ITU-T T.81 Annex K tables (luminance and chrominance), the baseline for quality scaling.
_LUMA = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip
_CHROMA = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
]  # fmt: skip


def quality_tables(quality: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """libjpeg's quality scaling of the standard tables (8×8 each)."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality

    def scaled(table: list[int]) -> Tensor:
        values = torch.tensor(table, dtype=torch.float32, device=device)
        return ((values * scale + 50) // 100).clamp(1, 255).view(8, 8)

    return scaled(_LUMA), scaled(_CHROMA)


@cache
def _dct_matrix_cpu() -> Tensor:
    n = 8
    matrix = torch.zeros(n, n)
    for k in range(n):
        alpha = math.sqrt(1 / n) if k == 0 else math.sqrt(2 / n)
        for i in range(n):
            matrix[k, i] = alpha * math.cos(math.pi * (2 * i + 1) * k / (2 * n))
    return matrix


def _dct_matrix(device: torch.device) -> Tensor:
    return _dct_matrix_cpu().to(device)


def _rgb_to_ycbcr(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return torch.stack([y, cb, cr], 1)


def _ycbcr_to_rgb(x: Tensor) -> Tensor:
    y, cb, cr = x.unbind(1)
    cb, cr = cb - 128, cr - 128
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return torch.stack([r, g, b], 1)


def _blockwise_roundtrip(channel: Tensor, table: Tensor, dct: Tensor) -> Tensor:
    """8×8 DCT, quantise (straight-through rounding), dequantise, inverse DCT.

    ``channel`` is N×H×W with H and W multiples of 8.
    """
    n, h, w = channel.shape
    blocks = (channel - 128).view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coefficients = dct @ blocks @ dct.T
    coefficients = round_ste(coefficients / table) * table
    blocks = dct.T @ coefficients @ dct
    return blocks.permute(0, 1, 3, 2, 4).reshape(n, h, w) + 128


#: chroma subsampling factors (rows, columns) by name
_CHROMA_FACTORS = {"4:2:0": (2, 2), "4:2:2": (1, 2), "4:4:4": (1, 1)}


def jpeg_roundtrip(x: Tensor, quality: int, subsampling: str = "4:2:0") -> Tensor:
    """Differentiable JPEG compress+decompress of an N×3×H×W RGB tensor in 0..255, with the
    chroma ``subsampling`` the real file has (4:2:0 by default, as platforms write)."""
    rows, cols = _CHROMA_FACTORS[subsampling]
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % (8 * rows), (-width) % (8 * cols)
    padded = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
    luma_table, chroma_table = quality_tables(quality, x.device)
    dct = _dct_matrix(x.device).to(x.dtype)
    ycbcr = _rgb_to_ycbcr(padded)
    luma = _blockwise_roundtrip(ycbcr[:, 0], luma_table.to(x.dtype), dct)
    chroma = ycbcr[:, 1:]
    if (rows, cols) != (1, 1):
        chroma = F.avg_pool2d(chroma, (rows, cols))
    n, _, ch, cw = chroma.shape
    chroma = _blockwise_roundtrip(chroma.reshape(n * 2, ch, cw), chroma_table.to(x.dtype), dct)
    chroma = chroma.view(n, 2, ch, cw)
    if (rows, cols) != (1, 1):  # libjpeg's "fancy" upsampling is a triangle filter
        chroma = F.interpolate(chroma, size=luma.shape[-2:], mode="bilinear", align_corners=False)
    out = _ycbcr_to_rgb(torch.cat([luma.unsqueeze(1), chroma], 1))
    return out[..., :height, :width].clamp(0, 255)


def resize(x: Tensor, scale: float) -> Tensor:
    """Bilinear resize by ``scale`` (antialiased when shrinking), as image tools do."""
    if scale == 1.0:
        return x
    height, width = x.shape[-2:]
    if int(height * scale) < 1 or int(width * scale) < 1:  # a side of a pixel or two: keep 1
        size = (max(1, int(height * scale)), max(1, int(width * scale)))
        return F.interpolate(
            x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1
        )
    return F.interpolate(
        x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=scale < 1
    )


class RandomTransform:
    """One random draw of the expectation-over-transformations family."""

    def __init__(
        self,
        jpeg_quality: tuple[int, int] | None,
        scale: tuple[float, float] | None,
        probability: float,
        rng: random.Random,
    ) -> None:
        self.jpeg_quality = jpeg_quality
        self.scale = scale
        self.probability = probability
        self.rng = rng

    def __call__(self, x: Tensor, rescale: bool = True) -> tuple[Tensor, float]:
        """Transformed tensor and the resize factor applied (boxes scale by it). Without
        ``rescale`` only the re-compression is drawn (the caller resizes as a tool does)."""
        factor = 1.0
        if rescale and self.scale and self.rng.random() < self.probability:
            factor = self.rng.uniform(*self.scale)
            x = resize(x, factor)
        if self.jpeg_quality and self.rng.random() < self.probability:
            x = jpeg_roundtrip(x, self.rng.randint(*self.jpeg_quality))
        return x, factor
