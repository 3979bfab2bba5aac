"""GPU figures: a 1080p photo (target < 1 s), a 1080p30 clip (target ≥ 1× real time), and
fp16 against fp32 (speed and hide rate), all in one process.

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/gpu.py \
        [--images facenet_multiface.jpg,...] [--seconds 5] [--skip-video] [--json out.json]

Without a CUDA device it prints "no CUDA device; skipped" and exits 0 (``--device cpu
--size 320x180 --seconds 0.5`` runs the same code on the CPU, to check the script itself).

1. Each detector of the presets under fp16 autocast against fp32, on the first photo: faces
   found, largest change of a face probability, change of the score loss, cosine and sign
   agreement of the input gradient. This is the evidence behind ``autocast_safe``.
2. Photos stretched to 1920×1080 (as ``bench/image.py`` does), ``balanced``, once per
   precision: seconds per photo (after a warm-up), detector passes, and the hide rate as the
   attack verifies it (fp32 detection on the saved JPEG and a q75 re-compression).
3. ``lp_s18.mp4`` (1280×720, 30 fps) scaled to 1920×1080, its first ``--seconds`` seconds,
   through the whole Ray pipeline, once per precision: wall time (actor start-up included),
   speed as a multiple of real time, seconds per stage, hide rate on the written file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from image import full_hd_photo  # bench/image.py
from PIL import Image

from deepguard.attack.config import load_preset
from deepguard.attack.core import frames_to_tensor
from deepguard.attack.losses import score_suppression_loss
from deepguard.models.registry import load_detector
from deepguard.stages.image_io import read_image
from deepguard.stages.poison import PoisonStage
from deepguard.stages.remux import ImageSink

IMAGES = "facenet_multiface.jpg,fdlite_group.jpg,lp_s0.jpg,lp_s42.jpg"
#: every detector a preset attacks with
DETECTORS = [
    "retinaface", "mtcnn", "yunet", "faceboxes", "slim320", "rfb320", "blazeface_back",
]  # fmt: skip


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def stability(frame: np.ndarray, device: str, dtype: torch.dtype) -> list[dict]:
    """Per detector: how far one autocast pass is from fp32 (scores and input gradient)."""
    rows = []
    x = frames_to_tensor(frame[None], device)
    device_type = torch.device(device).type
    for name in DETECTORS:
        detector = load_detector(name, device, download=False)
        outputs = {}
        for label, context in (
            ("fp32", torch.autocast(device_type, enabled=False)),
            ("half", torch.autocast(device_type, dtype=dtype)),
        ):
            view = x.clone().requires_grad_(True)
            with context:
                maps = [m.float() for m in detector.logit_maps(view)]
                faces = len(detector.detect_batch(x)[0])
            loss = score_suppression_loss(maps, detector.score_floors(0.3))
            scale = 256.0 if label == "half" and dtype is torch.float16 else 1.0
            if loss.requires_grad:
                (grad,) = torch.autograd.grad(loss * scale, view)
            else:  # nothing scored: no gradient
                grad = torch.zeros_like(view)
            outputs[label] = (maps, float(loss.detach()), grad / scale, faces)
        (maps32, loss32, grad32, faces32), (maps16, loss16, grad16, faces16) = outputs.values()
        aligned = [(a, b) for a, b in zip(maps32, maps16, strict=True) if a.shape == b.shape]
        change = max(((a.sigmoid() - b.sigmoid()).abs().max().item() for a, b in aligned
                      if a.numel()), default=float("nan"))  # fmt: skip
        strong = grad32.abs() > 1e-6 * grad32.abs().max()
        rows.append({
            "detector": name,
            "autocast_safe": detector.autocast_safe,
            "faces_fp32": faces32,
            "faces_half": faces16,
            "max_probability_change": round(change, 4),
            "loss_change_pct": round(100 * abs(loss16 - loss32) / max(loss32, 1e-9), 3),
            "gradient_cosine": round(torch.nn.functional.cosine_similarity(
                grad32.flatten(), grad16.flatten(), dim=0).item(), 4),
            "gradient_sign_agreement": round(
                (grad32.sign() == grad16.sign())[strong].float().mean().item(), 4),
            "finite": bool(torch.isfinite(grad16).all()),
        })  # fmt: skip
    return rows


def ensemble_pass(stage: PoisonStage, frame: np.ndarray) -> float:
    """Seconds of one forward+backward of every ensemble detector over the whole frame."""
    attack = stage.attack
    x = frames_to_tensor(frame[None], attack.device).requires_grad_(True)
    autocast = attack.autocast
    synchronize(str(attack.device))
    started = time.perf_counter()
    for detector in attack.detectors:
        with autocast.forward(detector):
            maps = detector.logit_maps(x)
        sum(m.float().sum() for m in maps).backward()
    synchronize(str(attack.device))
    return time.perf_counter() - started


def photos(names: list[str], size: tuple[int, int], device: str, precision: str,
           work: Path) -> dict:  # fmt: skip
    stage = PoisonStage(load_preset("balanced", precision=precision), device=device)
    frames = [resized(full_hd_photo(name), size) for name in names]
    small = np.asarray(Image.fromarray(frames[0]).resize((320, 180)))
    stage.protect_frames(small[None])  # warm-up: CUDA context, kernels, allocator
    baseline = ensemble_pass(stage, frames[0])
    seconds, passes = [], 0
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    for name, frame in zip(names, frames, strict=True):
        source = work / f"{Path(name).stem}.jpg"
        Image.fromarray(frame).save(source, quality=95)
        sink = ImageSink(work / f"{Path(name).stem}.{precision}.jpg",
                         read_image(source, 10**9), 92, False)  # fmt: skip
        started = time.perf_counter()
        result = stage.protect_frames(frame[None], roundtrip=sink.roundtrip)
        seconds.append(time.perf_counter() - started)
        passes += result.passes
        for detector, found in result.faces_before.items():
            before[detector] = before.get(detector, 0) + sum(found)
            after[detector] = after.get(detector, 0) + sum(result.faces_after[detector])
        print(f"  {precision} {name}: {seconds[-1]:.2f} s, {result.passes} passes, "
              f"faces {result.faces_before} → {result.faces_after}", flush=True)  # fmt: skip
    return {
        "precision": result.precision,
        "median_s": round(statistics.median(seconds), 3),
        "mean_s": round(statistics.mean(seconds), 3),
        "per_photo_s": [round(s, 3) for s in seconds],
        "ensemble_fwd_bwd_s": round(baseline, 4),
        "passes": passes,
        "hide_rate": hide_rates(before, after),
        "faces": {k: f"{after[k]}/{before[k]}" for k in before},
    }


def video(seconds: float, size: tuple[int, int], precision: str, work: Path) -> dict:
    # imported here: the photo and stability figures need no Ray
    from video_memory import synthetic_clip  # bench/video_memory.py

    from deepguard.pipeline.video import VideoProtector

    frames = max(1, round(seconds * 30))
    clip = work / f"clip-{size[0]}x{size[1]}-{frames}.mp4"
    if not clip.exists():
        synthetic_clip(clip, frames, *size)
    config = load_preset("balanced", precision=precision)
    started = time.perf_counter()
    report = VideoProtector(config).protect(clip, work / f"out.{precision}.mp4")
    wall = time.perf_counter() - started
    summary = report["summary"]
    detectors = summary["detectors"]
    duration = report["video"]["duration_s"]
    return {
        "frames": report["video"]["frames"],
        "duration_s": round(duration, 3),
        "wall_s": round(wall, 2),
        "speed_x_realtime": round(duration / wall, 3),
        "stage_seconds": summary["stage_seconds"],
        "workers": summary["workers"],
        "hide_rate": {k: v["hide_rate"] for k, v in detectors.items()},
        "faces": {k: f"{v['faces_after']}/{v['faces_before']}" for k, v in detectors.items()},
        "psnr_db": summary["psnr_db"],
        "memory_fallbacks": len(summary["memory_fallbacks"]),
    }


def hide_rates(before: dict[str, int], after: dict[str, int]) -> dict[str, float | None]:
    return {k: round(1 - after[k] / before[k], 4) if before[k] else None for k in before}


def resized(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if frame.shape[1::-1] == size:
        return frame
    return np.asarray(Image.fromarray(frame).resize(size, Image.LANCZOS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", default=IMAGES, help="comma-separated shared images")
    parser.add_argument("--seconds", type=float, default=5.0, help="video length")
    parser.add_argument("--precisions", default="fp16,fp32")
    parser.add_argument("--skip-video", action="store_true")
    parser.add_argument("--skip-stability", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu only to check this script")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device; skipped")
        return 0
    size = tuple(int(v) for v in args.size.split("x"))
    names = args.images.split(",")
    precisions = args.precisions.split(",")
    work = Path(tempfile.mkdtemp(prefix="dg-bench-gpu-"))
    figures: dict = {"torch": torch.__version__, "size": args.size}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        figures["gpu"] = props.name
        figures["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        figures["cuda"] = torch.version.cuda
    print(json.dumps(figures), flush=True)

    if not args.skip_stability:
        frame = resized(full_hd_photo(names[0]), size)
        figures["stability_fp16"] = stability(frame, device, torch.float16)
        print(f"\nfp16 autocast against fp32, one pass on {names[0]} at {args.size}:")
        for row in figures["stability_fp16"]:
            print("  " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)

    print(f"\nphotos at {args.size}, balanced: {', '.join(names)}")
    figures["photo"] = {p: photos(names, size, device, p, work) for p in precisions}
    for precision, row in figures["photo"].items():
        print(f"  [{precision}] median {row['median_s']} s (target < 1 s), mean {row['mean_s']} "
              f"s, ensemble fwd+bwd {row['ensemble_fwd_bwd_s']} s, {row['passes']} passes, "
              f"hide rate {row['hide_rate']}")  # fmt: skip
    if {"fp16", "fp32"} <= set(figures["photo"]):
        ratio = figures["photo"]["fp32"]["mean_s"] / figures["photo"]["fp16"]["mean_s"]
        figures["photo_fp16_speedup"] = round(ratio, 2)
        print(f"  fp16 is {ratio:.2f}× as fast as fp32")

    if not args.skip_video:
        from deepguard.pipeline.cluster import connect
        from deepguard.settings import get_settings

        connect(get_settings())  # Ray start-up is not part of any figure
        print(f"\nvideo: lp_s18 at {args.size}, 30 fps, {args.seconds} s, balanced, Ray")
        figures["video"] = {}
        for precision in precisions:
            row = video(args.seconds, size, precision, work)
            figures["video"][precision] = row
            print(f"  [{precision}] {row['wall_s']} s for {row['duration_s']} s: "
                  f"{row['speed_x_realtime']}× real time (target ≥ 1); stages "
                  f"{row['stage_seconds']}; hide rate {row['hide_rate']}; "
                  f"PSNR {row['psnr_db']} dB; {row['workers']}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
