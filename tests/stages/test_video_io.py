"""Decode and remux on clips made from the shared videos: what goes in comes out.

Audio packets byte for byte, every frame timestamp (variable frame rate), rotation, the mov
container, odd sizes; and the inputs that must be refused with a clear message.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from deepguard.errors import InputError
from deepguard.stages.chunk import Chunk
from deepguard.stages.decode import VideoSource, open_source
from deepguard.stages.remux import VideoSink
from deepguard.stages.scenecut import SceneCutStage
from deepguard.stages.video_io import EncoderSettings, H264Roundtrip, output_pix_fmt
from tests.media import make_clip, read_frames

MAX_PIXELS = 80_000_000
FAST = EncoderSettings(crf=18, preset="ultrafast")


def _audio_payloads(path: Path) -> list[str]:
    with av.open(str(path)) as container:
        return [
            hashlib.sha1(bytes(p)).hexdigest()
            for p in container.demux(container.streams.audio)
            if p.size
        ]


def _video_facts(path: Path) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return {
            "pts": [f.pts for f in frames],
            "rotation": frames[0].rotation,
            "size": (stream.codec_context.width, stream.codec_context.height),
            "pix_fmt": stream.codec_context.pix_fmt,
            "rate": stream.average_rate,
            "time_base": stream.time_base,
            "format": container.format.name,
            "duration": container.duration,
        }


def _passthrough(source: Path, target: Path) -> None:
    """Decode and re-encode with the real stages, no attack in between."""
    video = VideoSource(source, MAX_PIXELS, chunk_size=7)
    sink = VideoSink(video.info, target, video.info.container, FAST)
    for chunk in video.chunks():
        sink.write(chunk)
    sink.close()


@pytest.fixture(scope="module")
def clip_with_audio(videos_dir: Path, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("clips") / "talk.mp4"
    return make_clip(videos_dir / "lp_d11.mp4", target, 30, size=(128, 128))


def test_remux_keeps_audio_packets_timestamps_and_duration(clip_with_audio, tmp_path):
    out = tmp_path / "out.mp4"
    _passthrough(clip_with_audio, out)
    before, after = _video_facts(clip_with_audio), _video_facts(out)
    assert after["pts"] == before["pts"]
    assert after["size"] == before["size"] and after["rate"] == before["rate"]
    assert abs(after["duration"] - before["duration"]) <= 1_000_000 / 25
    assert _audio_payloads(out) == _audio_payloads(clip_with_audio)
    assert len(_audio_payloads(out)) > 10


def test_variable_frame_rate_survives(videos_dir, tmp_path):
    pts = [0, 512, 1024, 2048, 2304, 3584, 4096, 4608, 6144, 6400]  # uneven gaps
    clip = make_clip(videos_dir / "lp_d12.mp4", tmp_path / "vfr.mp4", len(pts), (96, 96), pts)
    out = tmp_path / "out.mp4"
    _passthrough(clip, out)
    assert _video_facts(out)["pts"] == pts


def test_rotation_and_mov_container(videos_dir, tmp_path):
    clip = make_clip(
        videos_dir / "lp_d11.mp4", tmp_path / "phone.mov", 8, size=(96, 64), rotation=-90
    )
    source = VideoSource(clip, MAX_PIXELS)
    assert source.info.rotation == 270 and source.info.container == "mov"
    (chunk,) = source.chunks()
    assert chunk.frames.shape[1:3] == (96, 64)  # display orientation: portrait
    out = tmp_path / "out.mov"
    _passthrough(clip, out)
    facts = _video_facts(out)
    assert facts["rotation"] == -90 and facts["size"] == (96, 64)
    assert facts["format"].startswith("mov")
    raw_in, raw_out = read_frames(clip)[0], read_frames(out)[0]  # stored orientation
    assert np.abs(raw_in.astype(int) - raw_out.astype(int)).mean() < 6


def test_odd_dimensions_keep_their_size(videos_dir, tmp_path):
    clip = make_clip(
        videos_dir / "lp_d11.mp4", tmp_path / "odd.mp4", 5, size=(481, 271), pix_fmt="yuv444p"
    )
    out = tmp_path / "out.mp4"
    _passthrough(clip, out)
    facts = _video_facts(out)
    assert facts["size"] == (481, 271) and facts["pix_fmt"] == "yuv444p"
    assert output_pix_fmt("yuv420p", 481, 271) == "yuv444p"
    assert output_pix_fmt("yuvj420p", 480, 270) == "yuv420p"


def test_h264_roundtrip_is_close_but_lossy(clip_with_audio):
    (chunk, *_) = VideoSource(clip_with_audio, MAX_PIXELS, chunk_size=4).chunks()
    decoded = H264Roundtrip("yuv420p", EncoderSettings())(chunk.frames)
    difference = np.abs(decoded.astype(int) - chunk.frames.astype(int))
    assert decoded.shape == chunk.frames.shape and 0 < difference.mean() < 4


def test_scene_cut_found_where_two_clips_meet(videos_dir):
    first = read_frames(videos_dir / "lp_d11.mp4", 24)
    second = read_frames(videos_dir / "lp_d12.mp4", 24)
    frames = np.stack(first + second)
    stage = SceneCutStage(Fraction(25), min_scene_len=8)
    starts = []
    for begin in range(0, len(frames), 10):
        chunk = stage.process(Chunk(begin, frames[begin : begin + 10]))
        starts += [begin + s for s in chunk.scene_starts]
    assert starts == [0, 24]


# -- refused inputs -------------------------------------------------------------------------


def test_truncated_video_is_refused(clip_with_audio, tmp_path):
    data = clip_with_audio.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.mp4"):
        source = open_source(cut, MAX_PIXELS)
        for _ in source.chunks():
            pass


def test_unknown_codec_is_refused(clip_with_audio, tmp_path):
    renamed = tmp_path / "odd.mp4"
    renamed.write_bytes(clip_with_audio.read_bytes().replace(b"avc1", b"zzzz"))
    with pytest.raises(InputError, match="codec is unknown"):
        open_source(renamed, MAX_PIXELS)


def test_file_without_video_stream_is_refused(clip_with_audio, tmp_path):
    target = tmp_path / "voice.mp4"
    with av.open(str(clip_with_audio)) as src, av.open(str(target), "w") as out:
        audio = src.streams.audio[0]
        copy = out.add_stream_from_template(audio)
        for packet in src.demux(audio):
            if packet.size:
                packet.stream = copy
                out.mux(packet)
    with pytest.raises(InputError, match="no video stream"):
        open_source(target, MAX_PIXELS)


def test_non_media_file_is_refused(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 100)
    with pytest.raises(InputError, match="not a readable video"):
        open_source(fake, MAX_PIXELS)


def test_huge_frames_are_refused(clip_with_audio):
    with pytest.raises(InputError, match="exceed the limit"):
        open_source(clip_with_audio, max_pixels=100 * 100)
