"""What one detector pass costs on this CPU, and what the cheaper-pass levers buy.

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/passes.py
         [--detectors scrfd_500m,retinaface,yolo5face_n05,yunet] [--size 640] [--repeats 7]

One pass is the attack's: a forward and a backward of the face loss with respect to the input,
on a press photo shrunk to ``--size`` on the long side (what a tool's look sees). For each
detector, in this process, against its own fp32 baseline measured alongside:
- ``channels_last`` memory format (input and weights);
- bf16 autocast on the CPU (this machine's CPU has AVX-512 BF16), with the loss's agreement;
- ``torch.compile`` of the detector (its first call, the compilation, reported apart);
- one thread instead of the default.
Prints the median seconds per pass and the ratio to the baseline (below 1: faster).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import torch

from deepguard.attack.losses import face_score_loss
from deepguard.models.registry import load_detector

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "media" / "press" / "group_five_office.jpg"


def view(size: int) -> torch.Tensor:
    image = cv2.imread(str(PHOTO))[:, :, ::-1]
    scale = size / max(image.shape[:2])
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()


def one_pass(detector, x: torch.Tensor, autocast: torch.dtype | None = None) -> float:
    leaf = x.detach().requires_grad_(True)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        maps = detector.face_maps(leaf)
    loss, _ = face_score_loss(maps, detector.score_floors(0.3), None, 0.15, 3.0)
    (grad,) = torch.autograd.grad(loss, leaf)
    del grad
    return float(loss.detach())


def compiled_network(detector):
    """The detector with its network compiled. ``torch.compile(detector)`` would compile
    ``forward`` alone, and the attack calls ``face_maps``, which would then run uncompiled."""
    for attribute in ("net", "graph"):
        network = getattr(detector, attribute, None)
        if isinstance(network, torch.nn.Module):
            setattr(detector, attribute, torch.compile(network))
            return detector
    raise TypeError(f"{detector.name}: no network module to compile")


def timed(run: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Median seconds of ``repeats`` calls after one warm-up, and the last loss."""
    loss = run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss = run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--detectors", default="scrfd_500m,retinaface,yolo5face_n05,yunet")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    x = view(args.size)
    threads = torch.get_num_threads()
    print(f"input {tuple(x.shape)}, {threads} threads; seconds per pass (ratio to fp32)")
    print(f"{'detector':<15} {'fp32':>7} {'channels_last':>15} {'bf16':>15} {'compile':>15} "
          f"{'1 thread':>15}  bf16 loss error, compile time")  # fmt: skip
    for name in args.detectors.split(","):
        detector = load_detector(name)
        base, loss = timed(lambda d=detector: one_pass(d, x), args.repeats)
        cells = []
        last = detector.to(memory_format=torch.channels_last)
        cl_x = x.contiguous(memory_format=torch.channels_last)
        seconds, _ = timed(lambda d=last, v=cl_x: one_pass(d, v), args.repeats)
        cells.append(seconds)
        detector = load_detector(name)
        seconds, bf16_loss = timed(lambda d=detector: one_pass(d, x, torch.bfloat16), args.repeats)
        cells.append(seconds)
        error = abs(bf16_loss - loss) / max(abs(loss), 1e-9)
        try:
            compiled = compiled_network(load_detector(name))
            start = time.perf_counter()
            one_pass(compiled, x)
            compile_s = time.perf_counter() - start
            seconds, _ = timed(lambda d=compiled: one_pass(d, x), args.repeats)
            cells.append(seconds)
        except Exception as error_:  # a graph the compiler cannot take: reported, not hidden
            compile_s = float("nan")
            cells.append(float("nan"))
            print(f"  {name}: torch.compile failed: {type(error_).__name__}: {error_}")
        torch.set_num_threads(1)
        seconds, _ = timed(lambda d=detector: one_pass(d, x), args.repeats)
        torch.set_num_threads(threads)
        cells.append(seconds)
        shown = " ".join(f"{s:>7.3f} ({s / base:4.2f})" for s in cells)
        print(f"{name:<15} {base:>7.3f} {shown}  {100 * error:.2f} %, {compile_s:.1f} s")


if __name__ == "__main__":
    main()
