"""Protection against the tools people use: a table per tool profile, per preset.

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/tools.py
         [--presets balanced,strong] [--only press] [--clip-frames 1] [--include-crowd]
         [--out DIR] [--judge-only]

``--out DIR`` keeps the clip frames and the protected files (``DIR/<preset>/``);
``--judge-only`` judges the files already in ``DIR/<preset>/`` (a run cut short included)
without protecting anything.

Protects the shared photos (``media/images``, without the ~250-face crowd unless
``--include-crowd``), the high-resolution ``media/press`` photos and frames of the shared clips
(``--clip-frames`` per clip, saved as PNG) with ``deepguard``'s own image path, then judges the
written files the way each tool would (``configs/tools.yaml``: the tool's detectors, after its
resize, at its threshold), as saved and after a JPEG q75 re-compression. Prints, per preset:
- per tool: the faces its looks find on the clean inputs and the share hidden (box-matched,
  IoU ≥ 0.5), and whether the tool's detectors are all attacked ("covered");
- per detector at native size: the ensemble's and, as transfer, the others';
- mean PSNR, and seconds and detector passes per picture.
Targets (issue: tool profiles): balanced ≥ 95 % hidden for every covered tool on the saved
file, ≥ 90 % after q75, mean PSNR ≥ 38 dB; strong the same plus MTCNN ≥ 90 % at ≥ 32 dB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from deepguard.attack.config import AttackConfig, load_preset, with_assignments
from deepguard.attack.profiles import enabled_profiles
from deepguard.models.registry import load_detector
from deepguard.pipeline.evaluate import Evaluation, evaluate
from deepguard.pipeline.protect import Protector

SHARED = Path(__file__).resolve().parents[2] / "shared" / "media"
CROWD = "biubug6_sample.jpg"
#: detectors outside every preset's ensemble: transfer
TRANSFER = ["mtcnn", "slim320", "rfb320", "faceboxes", "blazeface_front", "blazeface_back"]


def clip_frames(folder: Path, per_clip: int) -> list[Path]:
    """``per_clip`` evenly spaced frames of each shared clip, as lossless PNG files."""
    paths = []
    for clip in sorted((SHARED / "videos").glob("*.mp4")):
        with av.open(str(clip)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        picks = np.linspace(0, len(frames) - 1, per_clip + 2)[1:-1].round().astype(int)
        for index in picks:
            path = folder / f"{clip.stem}_f{index:04d}.png"
            Image.fromarray(frames[index]).save(path)
            paths.append(path)
    return paths


def inputs(
    only: str | None, include_crowd: bool, per_clip: int, work: Path, extract: bool = True
) -> list[Path]:
    photos = [p for p in sorted((SHARED / "images").iterdir()) if include_crowd or p.name != CROWD]
    press = sorted((SHARED / "press").iterdir())
    groups = {"images": photos, "press": press}
    if per_clip:
        groups["clips"] = clip_frames(work, per_clip) if extract else sorted(work.glob("*.png"))
    return [path for name, paths in groups.items() if only in (None, name) for path in paths]


def protect_all(config: AttackConfig, paths: list[Path], out: Path) -> list[dict]:
    protector = Protector(config)
    reports = []
    for path in paths:
        start = time.perf_counter()
        report = protector.protect(path, out / path.name)
        report["seconds"] = time.perf_counter() - start
        reports.append(report)
        print(f"  {path.name}: {report['seconds']:.1f} s, {report['detector_passes']} passes, "
              f"PSNR {report['psnr_db']} dB", flush=True)  # fmt: skip
    return reports


def rate(found: int, still: int) -> str:
    return "n/a" if found == 0 else f"{100 * (1 - still / found):.1f} %"


def print_tables(preset: str, ensemble: set[str], saved: Evaluation, q75: Evaluation) -> None:
    print(f"\n## {preset}: per tool profile (faces its looks find on the clean inputs)")
    print(f"{'tool':<16} {'covered':<8} {'clean faces':>11} {'hidden, saved':>14} "
          f"{'hidden, q75':>12}  detectors")  # fmt: skip
    for name, tool in saved.tools.items():
        covered = "yes" if set(tool.profile.detectors) <= ensemble else "no"
        faces, recompressed = tool.faces, q75.tools[name].faces
        print(f"{name:<16} {covered:<8} {faces.clean_faces:>11} "
              f"{rate(faces.clean_faces, faces.still_found):>14} "
              f"{rate(recompressed.clean_faces, recompressed.still_found):>12}  "
              f"{', '.join(tool.profile.detectors)}")  # fmt: skip
    print(f"\n## {preset}: per detector at native size")
    print(f"{'detector':<16} {'attacked':<8} {'clean faces':>11} {'hidden, saved':>14} "
          f"{'hidden, q75':>12}")  # fmt: skip
    for name, score in saved.scores.items():
        recompressed = q75.scores[name]
        print(f"{name:<16} {'yes' if name in ensemble else 'no':<8} {score.clean_faces:>11} "
              f"{rate(score.clean_faces, score.still_found):>14} "
              f"{rate(recompressed.clean_faces, recompressed.still_found):>12}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", default="balanced")
    parser.add_argument("--only", choices=["images", "press", "clips"])
    parser.add_argument("--clip-frames", type=int, default=1, help="frames per shared clip")
    parser.add_argument("--include-crowd", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--out", type=Path, help="keep clip frames and outputs here")
    parser.add_argument("--judge-only", action="store_true", help="judge what --out holds")
    parser.add_argument("--pictures", help="comma-separated file names: only these")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a preset field, e.g. --set iterations=24 --set momentum=0",
    )
    args = parser.parse_args()
    if args.judge_only and not args.out:
        parser.error("--judge-only needs --out")
    figures = {}
    with tempfile.TemporaryDirectory(prefix="deepguard-tools-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        paths = inputs(args.only, args.include_crowd, args.clip_frames, work, not args.judge_only)
        if args.pictures:
            paths = [path for path in paths if path.name in args.pictures.split(",")]
        profiles = enabled_profiles()
        for preset in args.presets.split(","):
            config = with_assignments(load_preset(preset), args.set)
            out = work / preset
            out.mkdir(exist_ok=True)
            if args.judge_only:
                reports = []
                paths = [path for path in paths if (out / path.name).exists()]
            else:
                print(f"\n# {preset}: protecting", flush=True)
                reports = protect_all(config, paths, out)
            print(f"{len(paths)} pictures: {', '.join(p.name for p in paths)}")
            names = list(dict.fromkeys([*config.detectors, *TRANSFER]))
            wanted = {n for p in profiles for n in p.detectors} | set(names)
            table = {name: load_detector(name) for name in sorted(wanted)}
            detectors = [table[name] for name in names]
            pairs = [(path, out / path.name) for path in paths]
            saved = evaluate(pairs, detectors, None, profiles, table)
            q75 = evaluate(pairs, detectors, 75, profiles, table)
            print_tables(preset, set(config.detectors), saved, q75)
            seconds = [r["seconds"] for r in reports]
            passes = [r["detector_passes"] for r in reports]
            psnr = [value for value in saved.psnr if np.isfinite(value)]
            print(f"\nmean PSNR {statistics.mean(psnr):.2f} dB (lowest {min(psnr):.2f})")
            if reports:
                print(f"seconds per picture: median {statistics.median(seconds):.1f}, "
                      f"max {max(seconds):.1f}, total {sum(seconds):.0f}; detector passes: "
                      f"median {statistics.median(passes):.0f}, max {max(passes)}")  # fmt: skip
            figures[preset] = {
                "tools": {
                    name: {
                        "clean_faces": tool.faces.clean_faces,
                        "still_found_saved": tool.faces.still_found,
                        "still_found_q75": q75.tools[name].faces.still_found,
                    }
                    for name, tool in saved.tools.items()
                },
                "detectors": {
                    name: {
                        "clean_faces": score.clean_faces,
                        "still_found_saved": score.still_found,
                        "still_found_q75": q75.scores[name].still_found,
                    }
                    for name, score in saved.scores.items()
                },
                "psnr_db": psnr,
                "seconds": seconds,
                "passes": passes,
            }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
