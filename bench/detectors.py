"""Per-detector cost on this machine: forward and forward+backward at 1280×720, and size.

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/detectors.py [--repeats 5]
Detectors whose weights are not available run with random weights (speed does not depend on
the values) and are marked so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deepguard.models.registry import detector_specs, load_detector
from deepguard.models.store import WeightError


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: prior caches, allocator
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 3, args.height, args.width, generator=generator) * 255
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.width}×{args.height}, median of {args.repeats}")  # fmt: skip
    print(f"{'detector':<16} {'params':>10} {'forward s':>10} {'fwd+bwd s':>10}  weights")
    for name, spec in detector_specs().items():
        try:
            detector, weights = load_detector(name, download=False), "real"
        except WeightError:
            detector, weights = spec.build(None), "random (not available)"
        params = sum(p.numel() for p in detector.parameters())

        def forward(detector=detector) -> None:
            with torch.no_grad():
                detector.score_maps(frame)

        def forward_backward(detector=detector) -> None:
            x = frame.clone().requires_grad_(True)
            sum(m.sum() for m in detector.score_maps(x)).backward()

        f = timed(forward, args.repeats)
        fb = timed(forward_backward, args.repeats)
        print(f"{name:<16} {params:>10,} {f:>10.3f} {fb:>10.3f}  {weights}")


if __name__ == "__main__":
    main()
