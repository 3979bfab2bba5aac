"""What one detector pass costs on this CPU, and what the cheaper-pass levers buy.

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/passes.py
         [--detectors scrfd_500m,retinaface,yolo5face_n05,yunet] [--size 640] [--repeats 7]
         [--photos fdlite_group.jpg,lp_s9.jpg [--rounds 2]]

One pass is the attack's: a forward and a backward of the face loss with respect to the input,
on a press photo shrunk to ``--size`` on the long side (what a tool's look sees). For each
detector, in this process, against its own fp32 baseline measured alongside:
- ``channels_last`` memory format (input and weights);
- bf16 autocast on the CPU (this machine's CPU has AVX-512 BF16), with the loss's agreement;
- ``torch.compile`` of the detector (its first call, the compilation, reported apart);
- one thread instead of the default.
Prints the median seconds per pass and the ratio to the baseline (below 1: faster).

With ``--photos``: instead, ``balanced`` end to end on those ``media/images`` pictures with
every detector in NCHW and with each detector's ``channels_last_on_cpu`` layout, alternated
in this process for ``--rounds`` rounds; seconds, passes, PSNR and the tools not protected.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import torch

from deepguard.attack.losses import face_score_loss
from deepguard.models.base import FaceDetector
from deepguard.models.registry import load_detector

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
PHOTO = MEDIA / "press" / "group_five_office.jpg"


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


def fresh(name: str) -> FaceDetector:
    """A detector of its own in the plain NCHW layout (the registry's instance is shared, and
    may already be channels_last: ``channels_last_on_cpu``)."""
    return copy.deepcopy(load_detector(name)).to(memory_format=torch.contiguous_format)


def compiled_network(detector: FaceDetector) -> FaceDetector:
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


def end_to_end(photos: list[str], rounds: int) -> None:
    """The layout lever on whole photos: what the attack, the checks and the shrink gain.
    The attack uses the registry's shared detectors, so switching their layout in place
    switches it for the attack."""
    from deepguard.attack.config import load_preset
    from deepguard.pipeline.protect import Protector

    config = load_preset("balanced")
    preferring = [d for d in map(load_detector, config.detectors) if d.channels_last_on_cpu]
    protector = Protector(config)
    with tempfile.TemporaryDirectory(prefix="deepguard-layout-") as out:
        for round_ in range(rounds):
            for layout in (torch.contiguous_format, torch.channels_last):
                for detector in preferring:
                    detector.to(memory_format=layout)
                for name in photos:
                    start = time.perf_counter()
                    report = protector.protect(MEDIA / "images" / name, Path(out) / name)
                    seconds = time.perf_counter() - start
                    failing = [r["tool"] for r in report["tools"] if r["status"] == "not protected"]
                    print(f"round {round_} {str(layout).split('.')[-1]:>17} {name}: "
                          f"{seconds:.1f} s, {report['detector_passes']} passes, PSNR "
                          f"{report['psnr_db']} dB; not protected: {', '.join(failing) or '-'}",
                          flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--detectors", default="scrfd_500m,retinaface,yolo5face_n05,yunet")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--photos", help="comma-separated media/images names: end to end")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.photos:
        end_to_end(args.photos.split(","), args.rounds)
        return
    torch._logging.set_logs(dynamo=logging.ERROR)  # graph breaks: the compile column says enough
    x = view(args.size)
    threads = torch.get_num_threads()
    print(f"input {tuple(x.shape)}, {threads} threads; seconds per pass (ratio to fp32)")
    print(f"{'detector':<15} {'fp32 before/after':>17} {'channels_last':>15} {'bf16':>15} "
          f"{'compile':>15} {'1 thread':>15}  bf16 loss error, compile time")  # fmt: skip
    for name in args.detectors.split(","):
        # each lever on its own copy: load_detector caches one instance per name, and a
        # lever applied to it in place would leak into the next column
        baseline = fresh(name)
        before, loss = timed(lambda d=baseline: one_pass(d, x), args.repeats)
        cells = []
        last = fresh(name).to(memory_format=torch.channels_last)
        cl_x = x.contiguous(memory_format=torch.channels_last)
        cells.append(timed(lambda d=last, v=cl_x: one_pass(d, v), args.repeats)[0])
        bf16 = fresh(name)
        seconds, bf16_loss = timed(lambda d=bf16: one_pass(d, x, torch.bfloat16), args.repeats)
        cells.append(seconds)
        error = abs(bf16_loss - loss) / max(abs(loss), 1e-9)
        try:
            compiled = compiled_network(fresh(name))
            start = time.perf_counter()
            one_pass(compiled, x)
            compile_s = time.perf_counter() - start
            cells.append(timed(lambda d=compiled: one_pass(d, x), args.repeats)[0])
        except Exception as error_:  # a graph the compiler cannot take: reported, not hidden
            compile_s = float("nan")
            cells.append(float("nan"))
            print(f"  {name}: torch.compile failed: {type(error_).__name__}: {error_}")
        torch.set_num_threads(1)
        cells.append(timed(lambda d=baseline: one_pass(d, x), args.repeats)[0])
        torch.set_num_threads(threads)
        after, _ = timed(lambda d=baseline: one_pass(d, x), args.repeats)
        base = (before + after) / 2  # the baseline before and after the levers: drift shows
        shown = " ".join(f"{s:>7.3f} ({s / base:4.2f})" for s in cells)
        fp32 = f"{before:.3f}/{after:.3f}"
        print(f"{name:<15} {fp32:>17} {shown}  {100 * error:.2f} %, {compile_s:.1f} s")


if __name__ == "__main__":
    main()
