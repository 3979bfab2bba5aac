"""Fitting the attack into GPU memory, and finishing a job when it does not fit.

Frames attacked together: on CUDA, as many as the free memory holds (from
``torch.cuda.mem_get_info`` and the attack's peak memory per pixel, measured on every call),
at most the configured batch; on the CPU, the configured batch.

Out of memory (``torch.cuda.OutOfMemoryError``, or a ``RuntimeError`` saying "out of
memory"): the cache is emptied and the frames are tried again, first in half as many frames
per batch (for the rest of the job), then, at one frame, with half the iterations (for that
call only), down to one iteration. Memory taken by a neighbour on a shared card is the usual
cause, and it comes and goes: the retry after emptying the cache is what mostly succeeds, and
the smaller budget bounds what the retries cost. Every step is logged as a warning and
recorded for the processing report; only one frame at one iteration that still does not fit
fails the job, with a clear error.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

import torch

from deepguard.errors import DeepguardError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the part of the free memory a batch may plan to fill (the estimate is rough, and the
#: allocator needs room for fragmentation)
HEADROOM = 0.8
#: the attack's peak memory per input pixel, until a call has measured it: deliberately high
#: (8 GiB for a 1080p frame), the first key frame of a clip runs alone and measures it
INITIAL_BYTES_PER_PIXEL = 4096.0


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA (or other allocator's) out-of-memory error, not some other failure."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(error, DeepguardError):  # ours, including the final one below
        return False
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def usable_memory(free: float, total: float, reserved: float, allocated: float,
                  share: float = 1.0) -> float:  # fmt: skip
    """Bytes this process may still plan to use on the card: the free memory plus what its
    allocator holds unused, and no more than its ``share`` of the card (the other attack
    actors on it see the same free memory and plan with it too)."""
    usable = free + reserved - allocated
    if share < 1:
        usable = min(usable, share * total - allocated)
    return max(0.0, usable)


def frames_that_fit(free_bytes: float, bytes_per_frame: float, limit: int) -> int:
    """How many frames a batch may hold: what ``HEADROOM`` of the free memory fits, at least
    one and at most ``limit``."""
    fits = int(free_bytes * HEADROOM // max(bytes_per_frame, 1.0))
    return max(1, min(limit, fits))


class MemoryGuard:
    """Batch size and the out-of-memory fallback for one attack stage (one per actor)."""

    def __init__(self, device: torch.device | str, batch_limit: int, share: float = 1.0) -> None:
        """``share``: the part of the card this process may plan with (its Ray GPU share)."""
        self.device = torch.device(device)
        self.batch_limit = max(1, batch_limit)  # halved for good on out of memory
        self.share = share
        self.bytes_per_pixel: float | None = None  # the highest measured so far

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def batch_size(self, height: int, width: int) -> int:
        """Frames of ``height``×``width`` to attack together now."""
        if not self.cuda:
            return self.batch_limit
        free, total = torch.cuda.mem_get_info(self.device)
        usable = usable_memory(
            free,
            total,
            torch.cuda.memory_reserved(self.device),
            torch.cuda.memory_allocated(self.device),
            self.share,
        )
        per_pixel = self.bytes_per_pixel or INITIAL_BYTES_PER_PIXEL
        return frames_that_fit(usable, per_pixel * height * width, self.batch_limit)

    def run(
        self,
        count: int,
        size: tuple[int, int],
        iterations: int,
        attempt: Callable[[int, int, int | None], T],
    ) -> tuple[list[T], list[dict]]:
        """Attack ``count`` frames of ``size`` (height, width) in batches that fit.

        ``attempt(start, stop, cap)`` attacks frames ``start:stop`` with at most ``cap``
        iterations per round (``None``: the full budget, ``iterations``). Returns the results
        in order and the fallbacks taken (empty when everything fit).
        """
        results: list[T] = []
        fallbacks: list[dict] = []
        cap: int | None = None
        start = 0
        while start < count:
            stop = min(count, start + self.batch_size(*size))
            try:
                with self._measured(stop - start, size):
                    results.append(attempt(start, stop, cap))
                start = stop
                continue
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                message = str(error).strip().splitlines()[0][:200] if str(error) else "OOM"
            # out of the except block: the traceback, and the tensors it holds, are gone
            self._release()
            step = self._fall_back(start, stop, size, cap or iterations, message)
            cap = step.get("iterations", cap)
            fallbacks.append(step)
        return results, fallbacks

    def _fall_back(
        self, start: int, stop: int, size: tuple[int, int], iterations: int, message: str
    ) -> dict:
        """The next, smaller, try: half the frames, else half the iterations."""
        frames = stop - start
        height, width = size
        if frames > 1:
            self.batch_limit = max(1, frames // 2)
            log.warning("out of memory attacking %d frames of %d×%d together (%s); "
                        "batch halved to %d", frames, width, height, message,
                        self.batch_limit)  # fmt: skip
            return {"frame": start, "frames": frames, "action": "halve_batch",
                    "batch": self.batch_limit, "error": message}  # fmt: skip
        if iterations <= 1:
            raise DeepguardError(
                f"out of {self.device.type.upper()} memory attacking one {width}×{height} "
                f"frame even at 1 iteration ({message}); free memory on the device, run fewer "
                "attack actors per GPU (a larger DEEPGUARD_GPU_SHARE) or use DEEPGUARD_DEVICE=cpu"
            )
        fewer = max(1, iterations // 2)
        log.warning("out of memory attacking one %d×%d frame at %d iterations (%s); "
                    "retrying at %d", width, height, iterations, message, fewer)  # fmt: skip
        return {"frame": start, "frames": 1, "action": "halve_iterations",
                "iterations": fewer, "error": message}  # fmt: skip

    @contextmanager
    def _measured(self, frames: int, size: tuple[int, int]):
        """On CUDA, learn the attack's peak memory per pixel from this call."""
        if not self.cuda:
            yield
            return
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        yield
        peak = torch.cuda.max_memory_allocated(self.device) - base
        per_pixel = peak / max(1, frames * size[0] * size[1])
        self.bytes_per_pixel = max(self.bytes_per_pixel or 0.0, per_pixel)

    def _release(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
