"""Memory stays flat however long the video: proportional set size of the whole job over time.

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/video_memory.py \
        [--frames 600] [--width 1920 --height 1080]

Builds a synthetic clip (the shared talking head, scaled to the requested size and looped),
protects it with a deliberately cheap attack (YuNet only, one iteration: memory, not
protection, is measured here) and samples the summed PSS (shared pages split fairly) of the
driver and every Ray process twice a second. Prints the peak during each quarter of the run:
with bounded chunks in flight the peak does not climb from one quarter to the next.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np

from deepguard.attack.config import load_preset
from deepguard.pipeline.cluster import connect
from deepguard.pipeline.video import VideoProtector
from deepguard.settings import get_settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "media" / "videos"


def synthetic_clip(target: Path, frames: int, width: int, height: int) -> Path:
    with av.open(str(SHARED / "lp_s18.mp4")) as source:
        originals = [f.to_ndarray(format="rgb24") for f in source.decode(video=0)]
    with av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "ultrafast"}
        for index in range(frames):
            rgb = cv2.resize(originals[index % len(originals)], (width, height))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return target


def job_pss_bytes() -> int:
    """Summed PSS of this process and every Ray process on the machine."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"ray" not in cmdline and int(proc.name) != os.getpid():
                continue
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dg-bench-mem-"))
    clip = synthetic_clip(work / "long.mp4", args.frames, args.width, args.height)
    config = load_preset("balanced", detectors=["yunet"], iterations=1)
    video = config.video.model_copy(update={"x264_preset": "ultrafast"})
    config = config.model_copy(update={"repair_rounds": 0, "video": video})
    connect(get_settings())
    done = {"remux": 0}
    samples: list[tuple[int, int]] = []  # (frames written, PSS)
    running = True

    def sample() -> None:
        while running:
            samples.append((done["remux"], job_pss_bytes()))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    VideoProtector(config).protect(
        clip, work / "out.mp4", progress=lambda stage, n, _: done.__setitem__(stage, n)
    )
    running = False
    sampler.join()
    seconds = time.perf_counter() - started
    frame_mb = args.width * args.height * 3 / 2**20
    print(f"{args.frames} frames {args.width}×{args.height} ({frame_mb:.1f} MiB each as RGB), "
          f"{seconds:.0f} s, {len(samples)} samples")  # fmt: skip
    for quarter in range(4):
        low, high = quarter * args.frames / 4, (quarter + 1) * args.frames / 4
        inside = [pss for written, pss in samples if low <= written < high] or [0]
        print(f"  frames {low:>5.0f}–{high:<5.0f} peak PSS {max(inside) / 2**30:.2f} GiB")
    print(f"  whole run peak PSS {max(p for _, p in samples) / 2**30:.2f} GiB")
    print(f"  mean PSS {np.mean([p for _, p in samples]) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
