"""Video protection: speed, hide rate on the decoded output, flicker, passes per frame.

Run: DEEPGUARD_WEIGHTS_DIR=../shared/weights .venv/bin/python bench/video.py \
        [--clip lp_d11.mp4] [--frames 50] [--preset balanced] [--detectors ...]

In one process it runs, on the same clip (its first --frames frames, audio included):
1. a plain decode + encode with the output settings: the speed baseline;
2. the deepguard pipeline (Ray, local cluster): warm starts along tracks and smoothing;
3. the same pipeline attacking every frame from scratch (one-frame chunks, no smoothing):
   the per-frame baseline for flicker and detector passes.
It prints speed as a multiple of real time and of the plain re-encode, the hide rate per
ensemble detector on frames decoded from each output file, the flicker of each (the mean
absolute frame-to-frame change of output minus input, on decoded frames), and checks that
audio packets, frame count, frame rate, size and duration are unchanged. Per tool profile it
also judges each protected face (the report's per-frame faces) on the frames decoded from the
written file and from its H.264 CRF 23 re-encode, as a sharing site would make it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from deepguard.attack.config import AttackConfig, load_preset, with_assignments
from deepguard.pipeline.cluster import connect
from deepguard.pipeline.video import VideoProtector
from deepguard.settings import get_settings
from deepguard.stages.decode import VideoSource
from deepguard.stages.remux import VideoSink
from deepguard.stages.video_io import EncoderSettings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "media" / "videos"


def trim(source: Path, target: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``source`` (near-lossless) with the audio that goes
    with them: a shorter benchmark input that keeps every property of the original."""
    with av.open(str(source)) as original, av.open(str(target), "w") as out:
        stream = original.streams.video[0]
        video = out.add_stream("libx264", rate=stream.average_rate)
        video.width, video.height = stream.codec_context.width, stream.codec_context.height
        video.pix_fmt, video.time_base = "yuv420p", stream.time_base
        video.codec_context.time_base = stream.time_base
        video.options = {"crf": "10", "preset": "fast"}
        audio = {s.index: out.add_stream_from_template(s) for s in original.streams.audio}
        end = None
        for index, frame in enumerate(original.decode(stream)):
            if index == frames:
                end = frame.pts * stream.time_base
                break
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    if audio:
        _append_audio(source, target, frames, end)
    return target


def _append_audio(source: Path, target: Path, frames: int, end) -> None:
    """Re-mux ``target`` with ``source``'s audio packets up to ``end`` seconds."""
    staged = target.with_suffix(".video.mp4")
    target.rename(staged)
    with av.open(str(staged)) as video_in, av.open(str(source)) as audio_in, \
            av.open(str(target), "w") as out:  # fmt: skip
        video_out = out.add_stream_from_template(video_in.streams.video[0])
        copies = {s.index: out.add_stream_from_template(s) for s in audio_in.streams.audio}
        for packet in video_in.demux(video_in.streams.video[0]):
            if packet.size:
                packet.stream = video_out
                out.mux(packet)
        for packet in audio_in.demux(audio_in.streams.audio):
            if packet.size and (end is None or packet.pts * packet.time_base < end):
                packet.stream = copies[packet.stream.index]
                out.mux(packet)
    staged.unlink()


def decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def audio_digest(path: Path) -> str:
    with av.open(str(path)) as container:
        packets = [bytes(p) for p in container.demux(container.streams.audio) if p.size]
    return hashlib.sha256(b"".join(packets)).hexdigest() + f" ({len(packets)} packets)"


def flicker(clean: np.ndarray, protected: np.ndarray) -> float:
    added = protected.astype(np.float32) - clean.astype(np.float32)
    return float(np.abs(np.diff(added, axis=0)).mean())


def facts(path: Path) -> tuple:
    info = VideoSource(path, 10**9).info
    with av.open(str(path)) as container:
        duration = container.duration
    return info.width, info.height, info.fps, duration


def plain_reencode(clip: Path, target: Path, settings: EncoderSettings) -> float:
    started = time.perf_counter()
    source = VideoSource(clip, 10**9)
    sink = VideoSink(source.info, target, source.info.container, settings)
    for chunk in source.chunks():
        sink.write(chunk)
    sink.close()
    return time.perf_counter() - started


def per_face_tools(
    config: AttackConfig, clean: np.ndarray, copies: dict[str, np.ndarray], rows: list[dict]
) -> dict[str, dict[str, str]]:
    """Per covered tool and copy: the share of the faces it finds on the clean frames that
    it no longer finds on the copy (the faces: each frame's protected boxes)."""
    from deepguard.attack.core import FacePoison
    from deepguard.attack.verification import Face

    attack = FacePoison(config.for_video())
    faces = [[Face(np.asarray([box], np.float32)) for box in row.get("faces", [])] for row in rows]
    before = attack.judge(clean, faces)
    figures: dict[str, dict[str, str]] = {}
    for name, frames in copies.items():
        after = attack.judge(frames, faces)
        for tool in attack.covered_tools():
            found = [f.faces for f in before.tool(tool)]
            still = [f.faces for f in after.tool(tool)]
            total = sum(len(b) for b in found)
            kept = sum(len(b & a) for b, a in zip(found, still, strict=True))
            rate = "n/a" if not total else f"{100 * (1 - kept / total):.1f} % of {total}"
            figures.setdefault(tool, {})[name] = rate
    return figures


def key_and_warm_passes(rows: list[dict]) -> dict[str, float | None]:
    """Mean passes of a key frame and of a warm frame (attack, checks and report; the final
    repairs and the check of the written file apart)."""
    means: dict[str, float | None] = {}
    for name, key in (("key", True), ("warm", False)):
        passes = [row["passes"] for row in rows if row["key_frame"] is key]
        means[name] = round(sum(passes) / len(passes), 1) if passes else None
    return means


def per_frame_baseline(config: AttackConfig) -> AttackConfig:
    video = config.video.model_copy(update={"warm_start": False, "smoothing": 0.0})
    return config.model_copy(update={"video": video})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clip", default="lp_d11.mp4")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--detectors", help="comma-separated ensemble override")
    parser.add_argument("--skip-baseline", action="store_true", help="no per-frame baseline")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override a preset field, e.g. --set video.smoothing=0.7 --set shrink_steps=0",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    detectors = args.detectors.split(",") if args.detectors else None
    config = with_assignments(load_preset(args.preset, detectors=detectors), args.set)
    work = Path(tempfile.mkdtemp(prefix="dg-bench-video-"))
    clip = trim(SHARED / args.clip, work / "clip.mp4", args.frames)
    clean = decoded(clip)
    duration = len(clean) / facts(clip)[2]
    encoder = EncoderSettings(config.video.crf, config.video.x264_preset)

    connect(get_settings())  # Ray start-up is not part of any figure
    plain = plain_reencode(clip, work / "plain.mp4", encoder)
    runs = {"deepguard": config}
    if not args.skip_baseline:
        runs["per-frame"] = per_frame_baseline(config)
    figures: dict[str, dict] = {}
    for name, run_config in runs.items():
        out = work / f"{name}.mp4"
        started = time.perf_counter()
        report = VideoProtector(run_config).protect(clip, out)
        seconds = time.perf_counter() - started
        summary = report["summary"]
        figures[name] = {
            "seconds": round(seconds, 1),
            "x_realtime": round(seconds / duration, 1),
            "x_plain_reencode": round(seconds / plain, 1),
            "passes_per_frame": summary["detector_passes_per_frame"],
            "passes_by_kind": summary["detector_passes_by_kind"],
            # where they go: a key frame's full attack against the frames carried from it
            "passes_key_warm": key_and_warm_passes(report["frames"]),
            "key_frames": summary["key_frames"],
            "hide_rate": {k: v["hide_rate"] for k, v in summary["detectors"].items()},
            "faces": {
                k: f"{v['faces_after']}/{v['faces_before']}"
                for k, v in summary["detectors"].items()
            },
            # per tool profile: faces its looks find on the decoded output / on the clean clip
            "tools": {
                row["tool"]: f"{row['faces_after']}/{row['faces_before']}"
                for row in summary["tools"]
                if row["covered"]
            },
            # the check of the written file: frames it found a face on, attacked again, and
            # the faces per detector on the file written before the repairs
            "final_repair": summary["final_repair"],
            "flicker_added": summary["flicker"],
            "flicker_decoded": round(flicker(clean, decoded(out)), 3),
            "psnr_db": summary["psnr_db"],
            "stage_seconds": summary["stage_seconds"],
            "same_audio": audio_digest(out) == audio_digest(clip),
            "same_frames_fps_size_duration": facts(out) == facts(clip)
            and len(decoded(out)) == len(clean),
        }
        shared = work / f"{name}.crf23.mp4"
        plain_reencode(out, shared, EncoderSettings(23, "medium"))
        figures[name]["tools_per_face"] = per_face_tools(
            run_config, clean, {"written": decoded(out), "crf23": decoded(shared)},
            report["frames"],
        )  # fmt: skip
    print(
        f"clip: {args.clip}, first {len(clean)} frames, {clean.shape[2]}×{clean.shape[1]}, "
        f"{duration:.2f} s; preset {args.preset}, ensemble {', '.join(config.detectors)}"
    )
    print(f"plain decode + encode: {plain:.2f} s ({plain / duration:.2f}× real time); "
          f"its decoded flicker (the codec's floor) "
          f"{flicker(clean, decoded(work / 'plain.mp4')):.3f}")  # fmt: skip
    for name, row in figures.items():
        print(f"\n[{name}]")
        for key, value in row.items():
            print(f"  {key:<30} {value}")
    if "per-frame" in figures:
        ours, base = figures["deepguard"], figures["per-frame"]
        added = ours["flicker_added"] / max(base["flicker_added"], 1e-9)
        on_files = ours["flicker_decoded"] / max(base["flicker_decoded"], 1e-9)
        print(f"\nflicker ratio deepguard / per-frame: {added:.2f} as added by protection "
              f"(target ≤ 0.5), {on_files:.2f} on the decoded files")  # fmt: skip
        print(
            f"passes per frame deepguard / per-frame: "
            f"{ours['passes_per_frame'] / max(base['passes_per_frame'], 1e-9):.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
