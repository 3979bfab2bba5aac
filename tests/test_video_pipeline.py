"""The whole video pipeline through a real Ray cluster started with ``ray start --head``."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pytest

from deepguard.attack.config import load_preset
from deepguard.attack.profiles import enabled_profiles
from deepguard.errors import DeepguardError, InputError
from deepguard.settings import Settings
from tests.media import make_clip, read_frames
from tests.processes import stop_ray_cluster

ray = pytest.importorskip("ray")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster_address():
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="dg-ray-")  # short: Ray's socket paths have a limit
    ray.shutdown()
    subprocess.run(
        [ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    yield f"127.0.0.1:{port}"
    ray.shutdown()
    stop_ray_cluster(temp_dir, port)  # this cluster only: not every Ray of the machine


@pytest.fixture(scope="module")
def clip(videos_dir: Path, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("pipeline") / "talk.mp4"
    return make_clip(videos_dir / "lp_d11.mp4", target, 10, size=(192, 192))


def _config(**video):
    config = load_preset(
        "balanced", detectors=["retinaface", "yunet"], iterations=6, epsilon=8, step=2
    )
    settings = {"chunk_size": 4, "refine_iterations": 2, "x264_preset": "ultrafast", **video}
    return config.model_copy(
        update={"repair_rounds": 1, "video": config.video.model_copy(update=settings)}
    )


def _audio(path: Path) -> list[str]:
    with av.open(str(path)) as container:
        return [hashlib.sha1(bytes(p)).hexdigest() for p in container.demux(
            container.streams.audio) if p.size]  # fmt: skip


def _frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_pipeline_protects_a_clip_on_a_ray_cluster(cluster_address, clip, tmp_path):
    from deepguard.pipeline.video import VideoProtector

    out = tmp_path / "talk.protected.mp4"
    report_path = tmp_path / "report.json"
    settings = Settings(RAY_ADDRESS=cluster_address)
    seen: dict[str, int] = {}
    report = VideoProtector(_config(), settings).protect(
        clip, out, report_path, progress=lambda stage, done, _: seen.__setitem__(stage, done)
    )
    assert ray.get_runtime_context().gcs_address.endswith(cluster_address.split(":")[1])
    assert _frame_count(out) == 10 and _audio(out) == _audio(clip)
    assert report_path.exists() and not list(tmp_path.glob(".*.part"))
    summary = report["summary"]
    assert set(summary["detectors"]) == {"retinaface", "yunet"}
    for figures in summary["detectors"].values():
        assert figures["faces_before"] >= 8  # the talking head is found in the clean frames
        assert figures["faces_after"] <= figures["faces_before"]
    # per tool: clean frames counted by the poison stage, the written file by the verify stage
    tools = {row["tool"]: row for row in summary["tools"]}
    assert list(tools) == [profile.name for profile in enabled_profiles()]
    for name in ("faceswap", "deepfacelab", "wav2lip"):  # RetinaFace stands for each
        row = tools[name]
        assert row["covered"] and row["faces_before"] >= 8
        assert row["status"] == ("protected" if row["faces_after"] == 0 else "not protected")
    for name in ("deepfacelive", "faceswap-cpu"):  # YOLO5Face and MTCNN were not attacked
        assert tools[name]["status"] == "not covered" and tools[name]["faces_before"] >= 8
    frame = report["frames"][0]
    assert frame["tools_before"]["deepfacelive"] >= 1 and "deepfacelive" in frame["tools_after"]
    after = sum(r["tools_after"]["faceswap"] for r in report["frames"])
    assert tools["faceswap"]["faces_after"] == after
    assert summary["detectors"]["yunet"]["hide_rate"] >= 0.8
    assert 1 <= summary["key_frames"] < 10  # the rest start from the previous frame
    assert summary["psnr_db"] > 30 and summary["flicker"] is not None
    # every pass is counted by kind: the attack's, the tools' other detectors', the check of
    # the written file
    by_kind = summary["detector_passes_by_kind"]
    assert by_kind["verify"] > 0 and by_kind["report"] > 0 and by_kind["faces"] > 0
    assert sum(by_kind.values()) == pytest.approx(summary["detector_passes_per_frame"], abs=0.1)
    assert len(report["frames"]) == 10 and "faces_after" in report["frames"][-1]
    assert seen["remux"] == 10 and seen["verify"] == 10


def test_a_frame_the_written_file_shows_is_repaired_and_the_clip_encoded_again(
    cluster_address, clip, tmp_path
):
    from deepguard.pipeline.video import VideoProtector, _build_poison
    from deepguard.stages.video_io import EncoderSettings, H264Roundtrip

    config = _config(smoothing=0.0)  # smoothing could cover the frame left bare
    roundtrip = H264Roundtrip("yuv420p", EncoderSettings(17, "ultrafast"))

    class LeaveFrameFiveBare:  # defined here so Ray ships it by value
        def __init__(self):
            self.poison = _build_poison(config.for_video(), "cpu", roundtrip)

        def process(self, chunk):
            chunk = self.poison.process(chunk)
            if chunk.start <= 5 < chunk.stop:  # as if its protection broke inside the clip
                chunk.protected[5 - chunk.start] = chunk.frames[5 - chunk.start]
            return chunk

    out = tmp_path / "talk.protected.mp4"
    protector = VideoProtector(
        config, Settings(RAY_ADDRESS=cluster_address), stages={"poison": LeaveFrameFiveBare}
    )
    seen: dict[str, int] = {}
    report = protector.protect(
        clip, out, progress=lambda stage, done, _: seen.__setitem__(stage, done)
    )
    repair = report["summary"]["final_repair"]
    assert 5 in repair["frames"] and 1 <= repair["rounds"] <= 2
    assert repair["faces_after_before_repair"]["yunet"] >= 1
    frame = report["frames"][5]
    assert frame["final_repair"]["passes"] > 0 and frame["psnr_db"] > 30
    # every check of the written file counts: the first one and one after each repair
    from deepguard.attack.core import FacePoison

    judge = FacePoison(config.for_video())
    frames = np.stack(read_frames(out, 1))
    one_check = judge.judge(frames, [None]).passes + judge.judge_uncovered(frames, [None]).passes
    assert frame["verify_passes"] == pytest.approx((repair["rounds"] + 1) * one_check)
    assert report["summary"]["detector_passes_by_kind"]["repair"] > 0
    assert 1 <= frame["final_repair"]["rounds"] <= repair["rounds"]
    assert frame["faces_after"]["yunet"] == 0  # judged on the file written the second time
    assert seen["repair"] == 10 and seen["verify"] == 10 and seen["remux"] == 10
    assert _frame_count(out) == 10 and _audio(out) == _audio(clip)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no partial file or spill left


def test_failing_frames_are_those_a_still_attacked_detector_finds():
    from deepguard.pipeline.video import _failing, _with_earlier_repairs

    rows = [
        {"faces_after": {"scrfd_500m": 0, "yunet": 0}, "given_up": []},
        {"faces_after": {"scrfd_500m": 1, "yunet": 0}, "given_up": []},
        {"faces_after": {"scrfd_500m": 0, "yunet": 2}, "given_up": ["yunet"]},  # given up
    ]
    assert _failing(rows, ["scrfd_500m", "yunet"]) == {1: ["scrfd_500m", "yunet"]}
    first = {"final_repair": {"passes": 40, "iterations": 8, "rounds": 1, "targets": ["a"]}}
    again = {"final_repair": {"passes": 10, "iterations": 2, "rounds": 1, "targets": ["a"]}}
    merged = _with_earlier_repairs(again, first)["final_repair"]
    assert (merged["passes"], merged["iterations"], merged["rounds"]) == (50, 10, 2)
    assert _with_earlier_repairs({}, first) == {}


def test_a_crashing_worker_fails_the_job_and_leaves_no_file(cluster_address, clip, tmp_path):
    from deepguard.pipeline.video import VideoProtector

    class CrashOnSecondChunk:  # defined here so Ray ships it by value
        def process(self, chunk):
            if chunk.start > 0:
                os._exit(1)  # the worker process dies, as on an OOM kill
            chunk.protected = chunk.frames.copy()
            chunk.stats = [{} for _ in range(len(chunk))]
            return chunk

    out = tmp_path / "talk.protected.mp4"
    protector = VideoProtector(
        _config(), Settings(RAY_ADDRESS=cluster_address), stages={"poison": CrashOnSecondChunk}
    )
    with pytest.raises(DeepguardError, match=r"died|failed"):
        protector.protect(clip, out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unreachable_cluster_is_a_clear_error(clip, tmp_path):
    from deepguard.pipeline.cluster import connect

    ray.shutdown()
    with pytest.raises(DeepguardError, match="cannot start or reach a Ray cluster"):
        connect(Settings(RAY_ADDRESS=f"127.0.0.1:{free_port()}"))


def test_a_failing_stage_is_reported_once(cluster_address, clip, tmp_path, monkeypatch):
    """The error reaches the caller, and no failed result is left unread for Ray to print
    again later as an "Unhandled error" with the remote traceback (13 lines on a terminal)."""
    from ray._private import worker

    from deepguard.pipeline.video import VideoProtector

    class Passthrough:  # defined here so Ray ships it by value; tracking and attack stand-in
        def process(self, chunk):
            chunk.protected = chunk.frames.copy()
            chunk.stats = [{} for _ in range(len(chunk))]
            return chunk

    class RefuseSecondChunk:
        def process(self, chunk):
            if chunk.start > 0:
                raise InputError("the second chunk is refused")
            return chunk

    @ray.remote
    class Marker:
        def fail(self):
            raise RuntimeError("the mark")

        def ping(self):
            return None

    unread: list[Exception] = []
    monkeypatch.setattr(worker, "_unhandled_error_handler", unread.append)
    stages = {"track": Passthrough, "poison": Passthrough, "smooth": RefuseSecondChunk}
    protector = VideoProtector(_config(), Settings(RAY_ADDRESS=cluster_address), stages=stages)
    try:
        protector.protect(clip, tmp_path / "talk.protected.mp4")
    except InputError as error:
        assert str(error) == "the second chunk is refused"
    else:
        pytest.fail("the refused chunk did not fail the job")
    assert not list(tmp_path.iterdir())
    # Ray reports unread failures from a background thread, in the order they are dropped:
    # a failure left unread on purpose, now, shows when every earlier one would have come
    marker = Marker.remote()
    mark = marker.fail.remote()
    ray.get(marker.ping.remote())  # calls run in order: the mark has failed, still unread
    del mark
    for _ in range(600):
        if unread:
            break
        time.sleep(0.1)
    assert ["the mark" in str(error) for error in unread] == [True], [
        str(error)[:300] for error in unread
    ]


def test_without_an_address_a_cluster_of_our_own_is_started(cluster_address: str) -> None:
    """A bare ray.init() joins the last cluster `ray start` began on this machine (recorded in
    /tmp/ray); deepguard's default is a local cluster of its own. Runs last in this module:
    Stops only the cluster it began."""
    from deepguard.pipeline import cluster

    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="dg-ray-")
    subprocess.run(
        [ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    ray.shutdown()
    try:
        cluster.connect(Settings(RAY_ADDRESS=None))
        assert not ray.get_runtime_context().gcs_address.endswith(f":{port}")
        assert not ray.get_runtime_context().gcs_address.endswith(
            ":" + cluster_address.rsplit(":", 1)[1]
        )
    finally:
        cluster.shutdown()
        stop_ray_cluster(temp_dir, port)
