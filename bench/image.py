"""Single-image protection speed at 1920×1080 (target: balanced ≤ 15 s on a 2-core CPU).

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/image.py [--preset balanced]

Prints wall time, forward+backward passes, iterations and the verdict, and the time as a
multiple of one ensemble forward+backward over the whole frame measured in the same process
(machines here are noisy; the ratio is the figure to compare between runs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepguard.attack.config import load_preset
from deepguard.attack.core import frames_to_tensor
from deepguard.stages.image_io import read_image
from deepguard.stages.poison import PoisonStage
from deepguard.stages.remux import ImageSink

SHARED = Path(__file__).resolve().parents[2] / "shared" / "media" / "images"


def full_hd_photo(name: str) -> np.ndarray:
    image = Image.open(SHARED / name).convert("RGB").resize((1920, 1080), Image.LANCZOS)
    return np.asarray(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--image", default="facenet_multiface.jpg")
    args = parser.parse_args()
    frame = full_hd_photo(args.image)
    stage = PoisonStage(load_preset(args.preset), device="cpu")

    x = frames_to_tensor(frame[None], "cpu").requires_grad_(True)
    start = time.perf_counter()
    for detector in stage.attack.detectors:
        sum(m.sum() for m in detector.logit_maps(x)).backward()
    baseline = time.perf_counter() - start

    tmp = Path("/tmp/deepguard-bench.jpg")
    Image.fromarray(frame).save(tmp, quality=95)
    sink = ImageSink(tmp.with_suffix(".out.jpg"), read_image(tmp, 10**9), 92, False)
    start = time.perf_counter()
    result = stage.protect_frames(frame[None], roundtrip=sink.roundtrip)
    elapsed = time.perf_counter() - start
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 1920×1080 "
          f"({args.image} resized), preset {args.preset}")  # fmt: skip
    print(f"one ensemble fwd+bwd over the full frame: {baseline:.2f} s")
    print(f"protect: {elapsed:.1f} s = {elapsed / baseline:.1f}× that; "
          f"{result.passes} detector passes, {result.iterations} iterations, "
          f"{result.repair_rounds} repair rounds")  # fmt: skip
    print(f"faces before {result.faces_before} after {result.faces_after}")
    print(f"phases: {', '.join(f'{k} {v:.1f} s' for k, v in result.timings.items())}")


if __name__ == "__main__":
    main()
