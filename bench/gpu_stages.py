"""The video stages in one process, without Ray: decode → scene cuts → track → poison.

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/gpu_stages.py
     [--frames 48] [--precision fp16] [--device cuda]

For a machine that can run PyTorch but not Ray (``bench/gpu.py`` runs the whole pipeline on
Ray). ``lp_s18.mp4`` (1280×720, 30 fps) is scaled to 1920×1080, as for the 1080p30 target.
Prints the poison stage's seconds as a multiple of the clip's duration, detector passes per
frame and the faces its own check (a lone-frame H.264 round trip at CRF + margin) still finds.
It is not the hide rate of a written file: smoothing, remux and the final verification are
not run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from deepguard.attack.config import load_preset
from deepguard.models.registry import load_detector
from deepguard.stages.decode import VideoSource
from deepguard.stages.poison import PoisonStage
from deepguard.stages.scenecut import SceneCutStage
from deepguard.stages.track import TrackStage
from deepguard.stages.video_io import EncoderSettings, H264Roundtrip

CLIP = Path(__file__).resolve().parents[2] / "shared" / "media" / "videos" / "lp_s18.mp4"
SIZE = (1920, 1080)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=48, help="rounded up to whole chunks")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, help="frames attacked together, at most")
    args = parser.parse_args()
    config = load_preset("balanced", precision=args.precision).for_video()
    if args.batch_size:
        batching = config.video.model_copy(update={"batch_size": args.batch_size})
        config = config.model_copy(update={"video": batching})
    video = config.video
    check = EncoderSettings(video.crf + video.verify_crf_margin, video.x264_preset)
    poison = PoisonStage(config, device=args.device, roundtrip=H264Roundtrip("yuv420p", check))
    track = TrackStage(load_detector(video.track_detector, args.device))
    source = VideoSource(CLIP, 10**8, video.chunk_size)
    fps = source.info.fps
    scenes = SceneCutStage(fps)
    rows: list[dict] = []
    poison_s = 0.0
    started = time.perf_counter()
    for chunk in source.chunks():
        if len(rows) >= args.frames:
            break
        chunk.frames = np.stack([cv2.resize(f, SIZE, interpolation=cv2.INTER_LINEAR)
                                 for f in chunk.frames])  # fmt: skip
        chunk = track.process(scenes.process(chunk))
        tick = time.perf_counter()
        chunk = poison.process(chunk)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        poison_s += time.perf_counter() - tick
        rows += chunk.stats
    wall = time.perf_counter() - started
    duration = len(rows) / fps
    before = {name: sum(r["faces_before"][name] for r in rows) for name in config.detectors}
    after = {name: sum(r["faces_after_roundtrip"][name] for r in rows) for name in config.detectors}
    print(f"torch {torch.__version__}, {args.device}, {args.precision}: {len(rows)} frames at "
          f"{SIZE[0]}×{SIZE[1]} ({duration:.2f} s of video), batches of at most "
          f"{poison.memory.batch_size(*SIZE[::-1])}")  # fmt: skip
    print(f"poison {poison_s:.1f} s = {poison_s / duration:.1f}× real time; decode, scene cuts, "
          f"tracking and poison {wall:.1f} s; "
          f"{np.mean([r['passes'] for r in rows]):.1f} passes per frame")  # fmt: skip
    print(f"faces before {before}, still found by the stage's own check {after}")


if __name__ == "__main__":
    main()
