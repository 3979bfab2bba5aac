"""Delivery chains: the real ones are OpenCV's and Pillow's own operations; the attack's
differentiable model of each stays close to them; a tool's randomised resize maps boxes back."""

from __future__ import annotations

import io
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from deepguard.attack.delivery import (
    CHAINS,
    Chain,
    ChainModel,
    OutputCodec,
    ToolResize,
    parse_chains,
)
from deepguard.attack.transforms import jpeg_roundtrip
from deepguard.errors import DeepguardError
from tests.conftest import read_rgb


@pytest.fixture(scope="module")
def photo(press_dir: Path) -> np.ndarray:
    """A press photo (1280×853): large enough that the 1080 chain shrinks it."""
    return read_rgb(press_dir / "group_five_office.jpg")


def _pillow_jpeg(frame: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    return np.asarray(Image.open(buffer).convert("RGB"))


@pytest.mark.parametrize("name", ["saved", "q75", "sns", "sns2048"])
def test_each_chain_is_what_opencv_and_pillow_produce(photo: np.ndarray, name: str) -> None:
    chain = CHAINS[name]
    expected = photo
    if chain.long_side and max(photo.shape[:2]) > chain.long_side:
        scale = chain.long_side / max(photo.shape[:2])
        size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
        expected = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    if chain.quality:
        expected = _pillow_jpeg(expected, chain.quality, 2)  # 4:2:0
    (delivered,) = chain.deliver(photo[None])
    assert delivered.shape == expected.shape
    assert np.array_equal(delivered, expected)
    if name == "sns":
        assert delivered.shape[:2] == (720, 1080)  # 1280×853 → long side 1080


def test_platforms_never_enlarge(media_dir: Path) -> None:
    small = read_rgb(media_dir / "lp_s12.jpg")  # 375×500
    assert CHAINS["sns"].size(*small.shape[:2]) == small.shape[:2]
    assert CHAINS["sns"].deliver(small[None]).shape == small[None].shape
    resized = Chain("0.9x", "0.9x", factor=0.9, method="bilinear")
    assert resized.size(500, 375) == (450, 338)


def test_the_model_of_each_chain_stays_close_to_the_real_one(photo: np.ndarray) -> None:
    """At its nominal settings (no jitter) the differentiable chain delivers nearly the pixels
    the real one does: closer than the picture itself is to them."""
    x = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float()
    for name in ("sns", "sns2048", "q75"):
        chain = CHAINS[name]
        model = ChainModel(OutputCodec(None), None, 0.0, random.Random(0), 0.0, 0)
        modelled = model(x, chain)[0].permute(1, 2, 0).numpy()
        (real,) = chain.deliver(photo[None])
        assert modelled.shape == real.shape, name
        error = np.abs(modelled - real.astype(np.float32)).mean()
        assert error < 1.2, (name, error)


@pytest.mark.parametrize(("subsampling", "code"), [("4:2:0", 2), ("4:4:4", 0)])
def test_the_jpeg_model_matches_libjpeg_for_its_chroma(
    photo: np.ndarray, subsampling: str, code: int
) -> None:
    noise = np.random.default_rng(0).normal(0, 6, (256, 320, 3))
    crop = np.clip(photo[:256, :320] + noise, 0, 255).astype(np.uint8)  # not yet a JPEG's
    real = _pillow_jpeg(crop, 92, code).astype(np.float32)
    x = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float()
    modelled = jpeg_roundtrip(x, 92, subsampling)[0].permute(1, 2, 0).numpy()
    assert np.abs(modelled - real).mean() < np.abs(crop.astype(np.float32) - real).mean()


def test_a_randomised_tool_resize_maps_boxes_into_its_view() -> None:
    """Whatever scale, crop and padding were drawn, a box follows the picture into the view:
    a bright square stays under its box."""
    picture = torch.zeros(1, 3, 400, 600)
    picture[..., 100:200, 300:400] = 255
    box = np.array([[300, 100, 400, 200]], np.float32)
    resize = ToolResize(random.Random(3), scale_jitter=0.1, pad=16, filter_mix=0.5)
    for _ in range(10):
        view, geometry = resize(picture, 640 / 600 / 2)
        x1, y1, x2, y2 = geometry.boxes_to_view(box)[0]
        inside = view[0, 0, round(y1) + 2 : round(y2) - 2, round(x1) + 2 : round(x2) - 2]
        assert float(inside.mean()) > 200
        above = view[0, 0, : max(0, round(y1) - 3)]
        assert above.numel() == 0 or float(above.max()) < 60


def test_unknown_chains_are_refused_by_name() -> None:
    assert [c.name for c in parse_chains("saved, sns")] == ["saved", "sns"]
    with pytest.raises(DeepguardError, match=r"unknown delivery chain.*instagram"):
        parse_chains("saved,instagram")
    from deepguard.attack.config import load_preset

    with pytest.raises(DeepguardError, match="unknown delivery chain"):
        load_preset("balanced", deliver=["saved", "tiktok"])
