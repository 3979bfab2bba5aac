"""The GPU path, checked on the CPU: out-of-memory fallback and mixed precision.

Real detectors and real media throughout; the only fake is the out-of-memory error, raised
by the attack's first calls as CUDA would raise it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepguard.attack.config import load_preset, with_assignments
from deepguard.attack.core import FacePoison
from deepguard.attack.memory import (
    MemoryGuard,
    frames_that_fit,
    is_out_of_memory,
    usable_memory,
)
from deepguard.attack.precision import resolve_precision
from deepguard.errors import DeepguardError
from deepguard.models.registry import load_detector
from deepguard.pipeline.protect import Protector
from deepguard.stages.chunk import Chunk
from deepguard.stages.poison import PoisonStage
from tests.media import read_frames

#: cheap settings: these tests are about batching and precision, not about hiding well
QUICK = {
    "detectors": ["yunet"],
    "tools": [],  # the precision and memory paths, not the tools' looks
    "iterations": 4,
    "repair_rounds": 1,
    "repair_iterations": 4,
    "shrink_steps": 0,
    "eot": False,
}


@pytest.fixture(scope="module")
def portrait(media_dir: Path) -> np.ndarray:
    """lp_s0 at a quarter of its size (150×176, one face): small enough to be fast."""
    image = Image.open(media_dir / "lp_s0.jpg").convert("RGB")
    return np.asarray(image.resize((image.width // 4, image.height // 4)))


@pytest.fixture(scope="module")
def clip(videos_dir: Path) -> np.ndarray:
    """Five frames of a talking head, 128×128."""
    return np.stack(read_frames(videos_dir / "lp_d11.mp4", 5))[:, ::4, ::4].copy()


class OutOfMemory:
    """Wraps ``FacePoison.protect``: its first ``failures`` calls raise CUDA's out-of-memory
    error (``when`` picks which calls may fail); every call is recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, failures: int, when=lambda call: True):
        self.failures = failures
        self.when = when
        self.calls: list[dict] = []
        real = FacePoison.protect

        def protect(attack: FacePoison, frames: np.ndarray, *args, **kwargs):
            call = {
                "frames": len(frames),
                "iterations": kwargs.get("iterations") or attack.config.iterations,
                "repair_iterations": attack.config.repair_iterations,
                "failed": False,
            }
            self.calls.append(call)
            if self.failures and self.when(call):
                self.failures -= 1
                call["failed"] = True
                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                    "capacity of 79.19 GiB of which 1.06 GiB is free."
                )
            return real(attack, frames, *args, **kwargs)

        monkeypatch.setattr(FacePoison, "protect", protect)


def test_out_of_memory_halves_the_batch_of_a_clip(
    clip: np.ndarray, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = with_assignments(load_preset("balanced", **QUICK), ["video.sample_every=1"])
    stage = PoisonStage(config.for_video(), batch_size=4)
    oom = OutOfMemory(monkeypatch, failures=2, when=lambda call: call["frames"] > 1)
    chunk = Chunk(10, clip, scene_starts=[0])
    with caplog.at_level(logging.WARNING, logger="deepguard.attack.memory"):
        stage.process(chunk)
    # frame 0 is a key frame (alone); frames 1-4 learn their shared perturbation together
    # (every frame sampled), tried as 4, then 2, then one by one; then single refinements
    assert [c["frames"] for c in oom.calls][:7] == [1, 4, 2, 1, 1, 1, 1]
    assert all(c["frames"] == 1 for c in oom.calls[7:])
    assert [c["failed"] for c in oom.calls] == [False, True, True] + [False] * (len(oom.calls) - 3)
    assert stage.memory.batch_limit == 1  # for the rest of the job
    assert chunk.protected.shape == clip.shape and chunk.protected.dtype == np.uint8
    assert len(chunk.stats) == len(clip)
    fallbacks = chunk.stats[1]["memory_fallbacks"]  # on the batch's first row
    assert [(f["action"], f["frames"], f["batch"], f["frame"]) for f in fallbacks] == [
        ("halve_batch", 4, 2, 11),
        ("halve_batch", 2, 1, 11),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "4 frames of 128×128" in warnings[0] and "batch halved to 2" in warnings[0]
    assert "batch halved to 1" in warnings[1]
    # the frames came out protected as usual: within ε of the input, delta per frame
    change = np.abs(chunk.protected.astype(int) - clip.astype(int))
    assert change.max() <= stage.config.epsilon


def test_out_of_memory_on_one_frame_halves_the_iterations_and_finishes(
    portrait: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = tmp_path / "portrait.png"
    Image.fromarray(portrait).save(source)
    out = tmp_path / "portrait.protected.png"
    oom = OutOfMemory(monkeypatch, failures=2)
    with caplog.at_level(logging.WARNING, logger="deepguard.attack.memory"):
        report = Protector(load_preset("balanced", **QUICK)).protect(source, out)
    assert [(c["frames"], c["iterations"], c["failed"]) for c in oom.calls] == [
        (1, 4, True),
        (1, 2, True),
        (1, 1, False),
    ]
    assert oom.calls[-1]["repair_iterations"] == 1  # the repairs are capped too
    assert [(f["action"], f["iterations"]) for f in report["memory_fallbacks"]] == [
        ("halve_iterations", 2),
        ("halve_iterations", 1),
    ]
    assert "CUDA out of memory" in report["memory_fallbacks"][0]["error"]
    assert report["iterations"] <= 2  # one main iteration and at most one repair
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "one 150×176 frame at 4 iterations" in warnings[0] and "retrying at 2" in warnings[0]
    assert "at 2 iterations" in warnings[1] and "retrying at 1" in warnings[1]
    written = np.asarray(Image.open(out))
    assert written.shape == portrait.shape and written.dtype == np.uint8


def test_out_of_memory_that_never_ends_is_a_clear_error(
    portrait: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "portrait.png"
    Image.fromarray(portrait).save(source)
    out = tmp_path / "portrait.protected.png"
    oom = OutOfMemory(monkeypatch, failures=10**6)
    with pytest.raises(DeepguardError, match=r"out of CPU memory .* even at 1 iteration"):
        Protector(load_preset("balanced", **QUICK)).protect(source, out)
    assert [c["iterations"] for c in oom.calls] == [4, 2, 1]
    assert not out.exists()


def test_other_errors_are_not_taken_for_out_of_memory(
    portrait: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")

    monkeypatch.setattr(FacePoison, "protect", broken)
    stage = PoisonStage(load_preset("balanced", **QUICK))
    with pytest.raises(RuntimeError, match="CUDNN_STATUS"):
        stage.protect_frames(portrait[None])
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert not is_out_of_memory(DeepguardError("out of memory attacking one frame"))


def test_the_batch_follows_free_memory() -> None:
    gib = 2**30
    assert frames_that_fit(free_bytes=40 * gib, bytes_per_frame=4 * gib, limit=8) == 8
    assert frames_that_fit(free_bytes=10 * gib, bytes_per_frame=4 * gib, limit=8) == 2
    assert frames_that_fit(free_bytes=1 * gib, bytes_per_frame=4 * gib, limit=8) == 1
    assert MemoryGuard("cpu", 3).batch_size(1080, 1920) == 3  # the CPU keeps the config's
    # what the allocator holds unused counts as free; an actor sharing a card plans with its part
    assert usable_memory(10 * gib, 80 * gib, 3 * gib, 1 * gib) == 12 * gib
    assert usable_memory(70 * gib, 80 * gib, 1 * gib, 1 * gib, share=0.25) == 19 * gib
    assert usable_memory(1 * gib, 80 * gib, 1 * gib, 1 * gib, share=0.25) == 1 * gib


def test_auto_precision_is_fp16_on_cuda_and_fp32_on_the_cpu() -> None:
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cuda:1") == "fp16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    config = load_preset("balanced")
    assert config.with_default_precision("fp32").precision == "fp32"
    assert (
        config.model_copy(update={"precision": "bf16"}).with_default_precision("fp32").precision
        == "bf16"
    )  # a preset's or the API's own choice wins


def _dtypes_seen(detector: torch.nn.Module, seen: set) -> list:
    """Record the dtype of every convolution output of ``detector``."""

    def hook(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        seen.add(output.dtype)

    handles = [
        module.register_forward_hook(hook)
        for module in detector.modules()
        if isinstance(module, torch.nn.Conv2d)
    ]
    return handles


def test_bf16_autocast_on_the_cpu_hides_like_fp32_and_keeps_mtcnn_fp32(
    portrait: np.ndarray,
) -> None:
    settings = dict(QUICK, detectors=["yunet", "mtcnn"], iterations=6, repair_rounds=0)
    results = {}
    seen: dict[str, set] = {"yunet": set(), "mtcnn": set()}
    handles = []
    for name in seen:
        handles += _dtypes_seen(load_detector(name), seen[name])
    try:
        for precision in ("fp32", "bf16"):
            attack = FacePoison(load_preset("balanced", precision=precision, **settings))
            results[precision] = attack.protect(portrait[None])
    finally:
        for handle in handles:
            handle.remove()
    assert seen["yunet"] == {torch.float32, torch.bfloat16}  # attack passes, verification
    assert seen["mtcnn"] == {torch.float32}  # autocast_safe = False: fp32 throughout
    fp32, bf16 = results["fp32"], results["bf16"]
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    assert bf16.frames.shape == portrait[None].shape and bf16.frames.dtype == np.uint8
    assert np.abs(bf16.frames.astype(int) - portrait.astype(int)).max() <= 6
    assert torch.isfinite(bf16.delta).all()
    # the same verdict as fp32 on the detector half precision ran on (both hide it)
    assert fp32.faces_before == bf16.faces_before
    assert sum(fp32.faces_after["yunet"]) == sum(bf16.faces_after["yunet"]) == 0


def test_an_overflowing_fp16_gradient_is_redone_in_fp32(portrait: np.ndarray) -> None:
    attack = FacePoison(load_preset("balanced", precision="fp16", **QUICK))
    (detector,) = attack.detectors
    view = torch.from_numpy(portrait.copy()).permute(2, 0, 1)[None].float().requires_grad_()
    optimiser = attack.optimiser
    optimiser._loss_scales[detector.name] = 1e38  # a scaled loss that overflows
    gradients, excess, peak = optimiser._detector_gradients(
        detector, view, None, None, True, attack.config.score_floor
    )
    assert gradients is None and excess > 0 and peak > detector.score_threshold
    assert optimiser._loss_scales[detector.name] < 1e38  # lowered for the next pass
    gradients, _, _ = optimiser._detector_gradients(
        detector, view, None, None, False, attack.config.score_floor
    )
    assert gradients and torch.isfinite(gradients[0]).all() and gradients[0].abs().sum() > 0


def test_attack_actors_share_each_card(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepguard.pipeline.cluster import (
        SINGLE_STAGE_GPU_SHARE,
        actors_per_gpu,
        attack_gpu_share,
        cluster_device,
    )
    from deepguard.settings import Settings

    monkeypatch.setenv("DEEPGUARD_GPU_SHARE", "0.25")
    settings = Settings()
    assert actors_per_gpu(settings) == 4
    # four attack actors and both single stages fit on one card, however Ray places them
    assert 4 * attack_gpu_share(settings) + 2 * SINGLE_STAGE_GPU_SHARE <= 1
    monkeypatch.setenv("DEEPGUARD_GPU_SHARE", "0.3")
    assert actors_per_gpu(Settings()) == 3
    assert cluster_device(Settings(), gpus=2) == "cuda"
    assert cluster_device(Settings(), gpus=0) == "cpu"  # a CPU-only cluster keeps working
    monkeypatch.setenv("DEEPGUARD_DEVICE", "cpu")
    assert cluster_device(Settings(), gpus=2) == "cpu"
    monkeypatch.setenv("DEEPGUARD_DEVICE", "cuda")
    with pytest.raises(DeepguardError, match="no GPU"):
        cluster_device(Settings(), gpus=0)
