"""The ``deepguard`` command line.

Each subcommand is a small function; errors caused by input or environment
(:class:`~deepguard.errors.DeepguardError`) are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from deepguard.errors import DeepguardError
from deepguard.progress import DETAIL_SEPARATOR

Handler = Callable[[argparse.Namespace], int]


def _models_list(args: argparse.Namespace) -> int:
    from deepguard.models.registry import detector_specs
    from deepguard.models.store import WeightStore

    store = WeightStore()
    print(f"{'detector':<16} {'status':<30} description")
    for spec in detector_specs().values():
        states = {store.status(file)[0].value for file in spec.files}
        status = states.pop() if len(states) == 1 else "incomplete: " + ", ".join(sorted(states))
        print(f"{spec.name:<16} {status:<30} {spec.description}")
        if spec.licence:
            print(f"{'':<16} {'':<30} licence: {spec.licence}")
    _list_tool_weights(store)
    return 0


def _list_tool_weights(store) -> None:
    """The tools' own detector files (configs/tool_weights.yaml): hash, size, whether here."""
    from deepguard.models.catalogue import tool_weights

    print("\nthe face-swap tools' own detector files (deepguard models fetch --tools):")
    print(f"{'file':<30} {'status':<18} {'sha256':<14} {'MB':>6}  run by")
    for entry in tool_weights().values():
        state, _ = store.status(entry.file)
        size = f"{entry.file.size / 1e6:.1f}" if entry.file.size else "?"
        print(f"{entry.file.name:<30} {state.value:<18} {entry.file.sha256[:12] + '…':<14} "
              f"{size:>6}  {entry.tools}")  # fmt: skip
        print(f"{'':<30} {'':<18} detector {entry.detector}; licence: {entry.licence}")


def _selected_specs(names: Sequence[str]):
    from deepguard.models.registry import detector_specs, get_spec

    return [get_spec(name) for name in names] if names else list(detector_specs().values())


def _models_fetch(args: argparse.Namespace) -> int:
    from deepguard.models.store import WeightError, WeightStore

    if args.tools:
        return _fetch_tool_weights(args.names)
    store = WeightStore()
    failures = 0
    for spec in _selected_specs(args.names):
        for file in spec.files:
            try:
                path = store.resolve(file, download=True)
                print(f"{spec.name}: {file.name} ok ({path})")
            except WeightError as error:
                failures += 1
                print(f"{spec.name}: {error}", file=sys.stderr)
    return 1 if failures else 0


def _fetch_tool_weights(names: Sequence[str]) -> int:
    """``models fetch --tools [FILE...]``: the catalogue's files, each verified; its licence
    printed when it arrives."""
    from deepguard.models.catalogue import fetch, tool_weights
    from deepguard.pipeline.tool_weights import progress_bars

    catalogue = tool_weights()
    unknown = [name for name in names if name not in catalogue]
    if unknown:
        raise DeepguardError(
            f"not in the tools' catalogue: {', '.join(unknown)}; known: {', '.join(catalogue)}"
        )
    chosen = [catalogue[name] for name in names] if names else list(catalogue.values())
    failures = 0
    for result in fetch(chosen, progress=progress_bars(sys.stderr)):
        entry = result.entry
        if result.error:
            failures += 1
            print(f"{entry.file.name}: {result.error}", file=sys.stderr)
            continue
        how = "fetched and verified" if result.new else "ok"
        print(f"{entry.file.name} {how} ({result.path}): {entry.tools}")
        if result.new:
            print(f"  licence: {entry.licence}")
    return 1 if failures else 0


def _models_verify(args: argparse.Namespace) -> int:
    from deepguard.models.store import WeightStatus, WeightStore

    store = WeightStore()
    bad = 0
    for spec in _selected_specs(args.names):
        for file in spec.files:
            state, path = store.status(file)
            bad += state in (WeightStatus.MISMATCH,)
            print(f"{spec.name}: {file.name}: {state.value}" + (f" ({path})" if path else ""))
    return 1 if bad else 0


def _attack_config(args: argparse.Namespace):
    from deepguard.attack.config import load_preset

    detectors = (
        [d.strip() for d in args.detectors.split(",") if d.strip()] if args.detectors else None
    )
    region_mode = None if args.region is None else args.region == "faces"
    tools = None
    if args.tools:
        tools = [] if args.tools == "none" else [t.strip() for t in args.tools.split(",") if t]
    deliver = _split(args.deliver) or None
    return load_preset(
        args.preset,
        detectors=detectors,
        tools=tools,
        deliver=deliver,
        epsilon=args.epsilon,
        iterations=args.iterations,
        step=args.step,
        seed=args.seed,
        region_mode=region_mode,
    )


def _protect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deepguard.models.registry import get_spec
    from deepguard.pipeline.jobs import JobStore, TrackedJob
    from deepguard.pipeline.protect import ProtectOptions, Protector
    from deepguard.pipeline.targets import plan_targets
    from deepguard.pipeline.tool_weights import prepare_tool_weights
    from deepguard.settings import get_settings

    config = _attack_config(args)
    for name in config.detectors:
        get_spec(name)
    _check_ray_address()
    targets = plan_targets(
        Path(args.input),
        Path(args.output) if args.output else None,
        Path(args.report) if args.report else None,
        args.overwrite,
    )
    # before the first job: the tools' own detector files this preset attacks, once
    prepare_tool_weights([config], out=io.StringIO() if args.quiet else sys.stderr)
    protector = Protector(config)
    store = JobStore(get_settings().job_db_path)
    parameters = config.model_dump(mode="json")
    refused = 0
    for target in targets:
        bar = _progress_bar(target.source.name, args.quiet)
        tracked = TrackedJob.new(store, "cli", target.source, target.output, parameters)

        def progress(stage: str, done: int, total: int, bar=bar, tracked=tracked) -> None:
            tracked.progress(stage, done, total)
            if bar:
                bar.update(stage, done, total)

        try:
            with tracked:
                options = ProtectOptions(args.keep_metadata, target.report)
                report = tracked.report = protector.protect(
                    target.source, target.output, options, progress
                )
        except DeepguardError as error:
            if len(targets) == 1:
                raise
            refused += 1  # a folder goes on with its other files
            print(f"deepguard: error: {error}", file=sys.stderr)
            continue
        finally:
            if bar:
                bar.close()
        if not args.quiet:
            print(_verdict(target.output, report))
    return 2 if refused else 0


def _verdict(output, report: dict) -> str:
    """One line per protected file: faces each detector found before → after, the tools it
    is protected against, the ε the faces got, and quality."""
    from deepguard.attack.face_report import describe_epsilon

    summary = report.get("summary", report)
    verdict = ", ".join(
        f"{name} {d['faces_before']}→{d['faces_after']}" for name, d in summary["detectors"].items()
    )
    tools = _tool_verdict(summary.get("tools", []))
    if tools:
        verdict += f"; {tools}"
    if "faces" in report:
        delivered = ", ".join(report.get("delivery", []))
        count = len(report["faces"])
        faces = f"{count} face" + ("" if count == 1 else "s")
        verdict = f"{faces} (judged on: {delivered}); {verdict}"
    seconds = summary["seconds"] if "seconds" in summary else report["timings_s"]["total"]
    epsilon = describe_epsilon(summary.get("epsilon"))
    quality = f"{epsilon}; " if epsilon else ""
    line = f"{output}: {verdict}; {quality}PSNR {summary['psnr_db']} dB; {seconds:.1f} s"
    if report["kind"] == "video":
        line += f"; flicker {summary['flicker']}; {summary['realtime_factor']}× real time"
        repaired = summary.get("final_repair", {}).get("frames", [])
        if repaired:
            line += f"; {len(repaired)} frames repaired after the check of the written file"
    return line


#: how the summary line names each group of tools, in the order it lists them
_TOOL_GROUPS = {
    "protected": "protected against",
    "not protected": "not protected",
    "not covered": "not covered",
    "no faces found": "no faces found by",
}


def _tool_verdict(rows: list[dict]) -> str:
    """The tools part of the summary line, e.g. ``protected against: roop, …; not protected:
    DeepFaceLab (1→1); not covered: …``, with counts only where the protection failed: that is
    what the reader has to act on."""
    groups: dict[str, list[str]] = {status: [] for status in _TOOL_GROUPS}
    for row in rows:
        name = row["title"]
        if row["status"] == "not protected":
            name += f" ({_failures(row)})"
        groups.setdefault(row["status"], []).append(name)
    parts = [
        f"{_TOOL_GROUPS.get(status, status)}: {', '.join(names)}"
        for status, names in groups.items()
        if names
    ]
    judged = [row for row in rows if row["status"] != "not covered" and "weights" in row]
    own = [row["title"] for row in judged if row["weights"] == "own weights"]
    if own:
        parts.append(f"judged on their own detectors: {', '.join(own)}")
    if judged and len(own) < len(judged):
        parts.append("the rest on stand-ins" if own else "judged on stand-ins")
    return "; ".join(parts)


def _failures(row: dict) -> str:
    """Where a tool still finds faces: ``sns 2→1, faces 3`` per delivery (a clip's rows have
    no deliveries: ``2→1``)."""
    parts = []
    for chain, tally in row.get("deliveries", {}).items():
        if not tally["faces_after"]:
            continue
        found = sorted({face for frame in tally["faces_found"] for face in frame})
        which = f", face {', '.join(str(i + 1) for i in found)}" if found else ""
        parts.append(f"{chain} {tally['faces_before']}→{tally['faces_after']}{which}")
    return "; ".join(parts) or f"{_faces(row['faces_before'])}→{_faces(row['faces_after'])}"


def _faces(count: int | None) -> str:
    return "?" if count is None else str(count)


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deepguard.attack.config import load_preset
    from deepguard.attack.delivery import parse_chains
    from deepguard.attack.profiles import judged_profiles
    from deepguard.models.catalogue import present
    from deepguard.models.registry import detector_specs, load_detector
    from deepguard.models.store import WeightError
    from deepguard.pipeline.evaluate import evaluate, format_table, pair_files
    from deepguard.settings import get_settings

    pairs = pair_files(Path(args.clean), Path(args.protected))
    here = present()  # the tools' own detector files: each tool is judged on its own where here
    preset = load_preset(args.preset).with_tool_weights(here)
    chains = parse_chains(args.deliver or preset.deliver)
    ensemble = set(_split(args.ensemble) or preset.detectors)
    profiles = judged_profiles(preset.tools, preset.extra_tools, ensemble | here)
    names = _split(args.detectors) or [n for n, s in detector_specs().items() if s.shipped]
    device = get_settings().resolved_device()
    loaded = {}  # every detector once, for the detector table and the tools' looks
    for name in names:
        try:
            loaded[name] = load_detector(name, device, download=False)
        except WeightError as error:
            if args.detectors:
                raise
            print(f"skipping {name}: {error}", file=sys.stderr)
    if not loaded:
        raise DeepguardError("no detector weights available; set DEEPGUARD_WEIGHTS_DIR")
    detectors = list(loaded.values())
    for name in dict.fromkeys(n for p in profiles for n in p.detectors):
        if name in loaded or name in names:
            continue
        try:
            loaded[name] = load_detector(name, device, download=False)
        except DeepguardError as error:  # unknown here, or no weights: the tool table says so
            print(f"tools: leaving out {name}: {error}", file=sys.stderr)
    evaluation = evaluate(pairs, detectors, chains, profiles, loaded)
    print(format_table(evaluation, ensemble))
    return 0


def _watch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deepguard.pipeline.jobs import JobStore
    from deepguard.pipeline.metrics import Metrics
    from deepguard.pipeline.protect import Protector
    from deepguard.pipeline.tool_weights import prepare_tool_weights
    from deepguard.pipeline.watch import WatchFolder
    from deepguard.settings import get_settings

    settings = get_settings()
    _check_ray_address()
    config = _attack_config(args)
    prepare_tool_weights([config], settings)  # at start: the tools' own files it attacks
    store = JobStore(settings.job_db_path)
    metrics = Metrics(store)
    if args.metrics_port:
        metrics.serve(args.metrics_port, settings.host)
    watcher = WatchFolder(
        Path(args.input), Path(args.output), Protector(config, settings),
        store, settings, metrics,
    )  # fmt: skip
    if args.once:
        try:  # a first scan only records sizes; the second finds them stable
            watcher.poll(wait=True)
            time.sleep(settings.watch_stable_seconds)
            watcher.poll(wait=True)
        finally:
            watcher.close()
        return 0
    print(f"watching {args.input} → {args.output} (Ctrl-C stops)", file=sys.stderr)
    watcher.run(args.interval)  # Ctrl-C or SIGTERM: running jobs cancelled, then exit 130/143
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    from deepguard.pipeline.jobs import JobStore
    from deepguard.pipeline.retention import cleanup
    from deepguard.settings import get_settings

    settings = get_settings()
    result = cleanup(settings, JobStore(settings.job_db_path))
    print(f"deleted {result.deleted_files} files ({result.freed_bytes / 2**20:.1f} MiB) older "
          f"than {settings.retention_hours:g} h; archived {result.archived_reports} reports, "
          f"pruned {result.pruned_reports}")  # fmt: skip
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deepguard.pipeline.submit import job_client, submit, wait

    client = job_client(args.address)
    options = ["--preset", args.preset]
    output_dir = Path(args.output_dir) if args.output_dir else None
    submissions = submit(client, [Path(f) for f in args.files], output_dir, options)
    for item in submissions:
        print(f"{item.job_id}\t{item.input} → {item.output}")
    if not args.wait:
        return 0
    statuses = wait(client, [s.job_id for s in submissions], args.timeout)
    for job_id, status in statuses.items():
        print(f"{job_id}\t{status}")
    return 0 if all(status == "SUCCEEDED" for status in statuses.values()) else 1


def _jobs(args: argparse.Namespace) -> int:
    """Jobs in the job store (every CLI, watch and dashboard job of this machine's store) and
    on the Ray cluster (submitted ones). Opening the store marks the jobs of processes that
    died as failed, and ``list`` says which."""
    import json

    from deepguard.pipeline.jobs import JobStore
    from deepguard.settings import get_settings

    store = JobStore(get_settings().job_db_path)
    if args.jobs_command == "list":
        _list_stored_jobs(store)
        try:
            client = _ray_job_client(args.address)
        except DeepguardError as error:
            print(f"Ray jobs: not listed ({error})", file=sys.stderr)
            return 0
        from deepguard.pipeline.submit import job_rows

        rows = job_rows(client)
        print(f"Ray jobs at {args.address}: {len(rows)}")
        for row in rows:
            print(f"{row['id']}\t{row['status']}\t{row['input']} → {row['output']}")
        return 0
    if args.jobs_command == "status":
        try:
            job = store.get(args.id)
        except KeyError:
            job = None
        if job is not None:
            status = job.summary()
            owner = store.owners().get(job.id)
            if owner is not None:
                status["owner"] = {"host": owner.host, "pid": owner.pid}
            print(json.dumps(status, indent=2))
            return 0
    client = _ray_job_client(args.address)
    if args.jobs_command == "status":
        info = client.get_job_info(args.id)
        status = {"id": args.id, "status": str(info.status.value), "message": info.message,
                  "metadata": info.metadata}  # fmt: skip
        print(json.dumps(status, indent=2))
    elif args.jobs_command == "logs":
        print(client.get_job_logs(args.id), end="")
    elif args.jobs_command == "cancel":
        stopped = client.stop_job(args.id)
        print(f"{args.id}: {'stopping' if stopped else 'already finished'}")
    return 0


def _ray_job_client(address: str):
    from deepguard.pipeline.submit import job_client

    return job_client(address)


def _list_stored_jobs(store) -> None:
    """The store's jobs, newest first: those this opening marked failed first, and a job
    another host runs said to be its (this machine cannot tell whether it still runs)."""
    import socket

    for job in store.recovered:
        print(f"marked failed: {job.id} ({job.input}): {job.error}")
    here = socket.gethostname()
    owners = store.owners()
    jobs = store.list(limit=1000)
    print(f"jobs in {store.path}: {len(jobs)}")
    for job in jobs:
        line = f"{job.id}\t{job.state.value}\t{job.origin}\t{job.input} → {job.output or '-'}"
        owner = owners.get(job.id)
        if owner is not None and owner.host != here:
            line += f"\t(run by {owner.host}, pid {owner.pid}: not judged here)"
        elif job.error:
            line += f"\t{job.error}"
        print(line)


def _check_ray_address() -> None:
    """A ``RAY_ADDRESS`` that is not a Ray cluster fails the command at once (photos too: the
    operator meant the work to go there), in seconds, with what answered there."""
    from deepguard.pipeline.cluster import check_address
    from deepguard.settings import get_settings

    check_address(get_settings())


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()] if value else []


class _ProgressBar:
    """tqdm bars on stderr fed by a (phase, done, total) callback: one bar per phase, so a
    video shows frames done, frames per second and ETA for every pipeline stage."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bars: dict = {}

    def update(self, phase: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if DETAIL_SEPARATOR in phase:  # per-detector detail: the dashboard shows it
            return
        bar = self.bars.get(phase)
        if bar is None:
            unit = "it" if phase == "attack" else "frame"
            bar = tqdm(desc=f"{self.label} {phase:>8}", unit=unit, file=sys.stderr,
                       leave=False, position=len(self.bars))  # fmt: skip
            self.bars[phase] = bar
        bar.total = total or None
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _progress_bar(label: str, quiet: bool) -> _ProgressBar | None:
    return None if quiet else _ProgressBar(label)


def _add_attack_options(parser: argparse.ArgumentParser) -> None:
    from deepguard.attack.config import preset_names

    parser.add_argument(
        "--preset",
        default="balanced",
        choices=preset_names(),
        help="attack preset (default: balanced)",
    )
    advanced = parser.add_argument_group("advanced (override the preset)")
    advanced.add_argument("--detectors", help="comma-separated ensemble, e.g. retinaface,mtcnn")
    advanced.add_argument(
        "--tools",
        help="comma-separated tool profiles to attack and judge under (configs/tools.yaml; "
        "default: every enabled one; 'none': the detectors at native size only)",
    )
    advanced.add_argument(
        "--deliver",
        metavar="CHAINS",
        help="delivery chains the result must hold on: saved, q75, sns (1080 px, JPEG q80), "
        "sns2048 (default: the preset's, saved,sns)",
    )
    advanced.add_argument("--epsilon", type=float, help="L∞ budget in pixel levels (8 = 8/255)")
    advanced.add_argument("--iterations", type=int, help="attack iterations before verification")
    advanced.add_argument("--step", type=float, help="step size in pixel levels")
    advanced.add_argument("--seed", type=int, help="random seed (same seed, same output)")
    advanced.add_argument(
        "--region",
        choices=["faces", "frame"],
        help="perturb only around detected faces, or the whole frame",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepguard",
        description="Protect photos and videos of people against deepfakes (FacePoison).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    protect = commands.add_parser(
        "protect",
        help="protect an image or video (or a folder of them) against face detection",
        description="Add an imperceptible FacePoison perturbation so face detectors miss the "
        "faces. The result is verified on the saved file.",
    )
    protect.add_argument("input", metavar="IN", help="image or video file, or a folder")
    protect.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="output file (default IN.protected.EXT) or folder (default IN/protected)",
    )
    protect.add_argument(
        "--report", metavar="R.json", help="write the JSON processing log (a folder for IN folders)"
    )
    protect.add_argument(
        "--keep-metadata", action="store_true", help="keep EXIF (GPS included); stripped by default"
    )
    protect.add_argument(
        "--overwrite",
        action="store_true",
        help="allow OUT to be IN itself (or a link to it): the original is replaced",
    )
    protect.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    _add_attack_options(protect)
    protect.set_defaults(handler=_protect)

    evaluation = commands.add_parser(
        "eval",
        help="measure how many faces tools and detectors still find on protected images",
        description="Compare clean and protected images (two files, or two folders matched by "
        "name), per face and per delivery chain: the faces found on the clean input, those "
        "still found on the output (a detection overlapping the face, IoU >= 0.3), other "
        "detections, hide rate, PSNR and SSIM. Detectors outside the attack ensemble are "
        "listed as transfer. A second table scores each face-swap tool profile through its own "
        "detectors, resize and threshold; a tool whose detectors are not all in the ensemble "
        "is 'not covered'.",
    )
    evaluation.add_argument("clean", metavar="CLEAN", help="clean image or folder")
    evaluation.add_argument("protected", metavar="OUT", help="protected image or folder")
    evaluation.add_argument(
        "--deliver",
        metavar="CHAINS",
        help="delivery chains to judge on, e.g. saved,q75,sns,sns2048 (default: the preset's)",
    )
    evaluation.add_argument(
        "--detectors", help="comma-separated detectors to evaluate (default: all with weights)"
    )
    evaluation.add_argument(
        "--ensemble", help="detectors the attack used (default: the preset's ensemble)"
    )
    evaluation.add_argument(
        "--preset", default="balanced", help="preset whose ensemble is assumed (default balanced)"
    )
    evaluation.set_defaults(handler=_eval)

    watch = commands.add_parser(
        "watch",
        help="protect every image or video dropped into a folder",
        description="Poll IN_DIR; complete new files are protected into OUT_DIR exactly once "
        "(keyed by content), then moved to IN_DIR/done, or IN_DIR/failed with an error JSON.",
    )
    watch.add_argument("input", metavar="IN_DIR")
    watch.add_argument("output", metavar="OUT_DIR")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between scans")
    watch.add_argument("--once", action="store_true", help="process what is there and exit")
    watch.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    _add_attack_options(watch)
    watch.set_defaults(handler=_watch)

    cleanup = commands.add_parser(
        "cleanup",
        help="delete uploads and results past the retention time; archive recent reports",
    )
    cleanup.set_defaults(handler=_cleanup)

    address = {"default": os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
               "help": "Ray dashboard address (default $RAY_API_SERVER_ADDRESS or "
                       "http://127.0.0.1:8265)"}  # fmt: skip
    submit = commands.add_parser(
        "submit",
        help="submit files to a Ray cluster as Ray jobs (paths on shared storage)",
    )
    submit.add_argument("files", nargs="+", metavar="FILE")
    submit.add_argument("--address", **address)
    submit.add_argument("--output-dir", help="where outputs go (default: beside each input)")
    submit.add_argument("--preset", default="balanced")
    submit.add_argument("--wait", action="store_true", help="wait for every job to end")
    submit.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    submit.set_defaults(handler=_submit)

    jobs = commands.add_parser(
        "jobs",
        help="list and inspect jobs (the job store's and Ray's); read logs of or cancel Ray jobs",
        description="list: the job store's jobs (jobs of processes that died are marked failed, "
        "and listed as marked), then deepguard's jobs on the Ray cluster when its Jobs API "
        "answers. status: a job of either. logs, cancel: Ray jobs.",
    )
    jobs.add_argument("--address", **address)
    job_commands = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    job_commands.add_parser("list", help="the job store's jobs, then the cluster's, newest first")
    for action in ("status", "logs", "cancel"):
        job_commands.add_parser(action, help=f"{action} of one job").add_argument("id")
    jobs.set_defaults(handler=_jobs)

    serve = commands.add_parser(
        "serve",
        help="run the web dashboard and HTTP API",
        description="Serve the dashboard and its API (OpenAPI at /docs) on HOST:PORT from the "
        "settings. Binding beyond localhost needs DEEPGUARD_API_TOKEN.",
    )
    serve.add_argument("--host", help="bind address (default $HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default $PORT or 5000)")
    serve.add_argument(
        "--no-token", action="store_true", help="allow a non-local bind without an API token"
    )
    serve.set_defaults(handler=_serve)

    models = commands.add_parser(
        "models",
        help="list, download and verify the face-detector weights",
        description="Manage detector weights: local folder, user cache, or one verified download.",
    )
    model_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = model_commands.add_parser(
        "list", help="show every detector and whether its weights are available"
    )
    listing.set_defaults(handler=_models_list)
    fetch = model_commands.add_parser(
        "fetch", help="download missing weights (all detectors, or the ones named)"
    )
    fetch.add_argument(
        "names", nargs="*", metavar="NAME",
        help="detector names (default: all); with --tools, catalogue file names",
    )  # fmt: skip
    fetch.add_argument(
        "--tools", action="store_true",
        help="the face-swap tools' own detector files (configs/tool_weights.yaml), from the "
        "mirror (DEEPGUARD_WEIGHTS_BASE_URL) or their public sources, verified by sha256",
    )  # fmt: skip
    fetch.set_defaults(handler=_models_fetch)
    verify = model_commands.add_parser(
        "verify", help="check local weights against their pinned sha256"
    )
    verify.add_argument("names", nargs="*", metavar="NAME", help="detector names (default: all)")
    verify.set_defaults(handler=_models_verify)
    return parser


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from deepguard.attack.config import load_preset, preset_names
    from deepguard.pipeline.tool_weights import prepare_tool_weights
    from deepguard.settings import get_settings
    from deepguard.web.app import create_app

    settings = get_settings()
    settings = settings.model_copy(update={"host": args.host or settings.host,
                                           "port": args.port or settings.port})  # fmt: skip
    if not settings.api_token and not _is_loopback(settings.host) and not args.no_token:
        raise DeepguardError(
            f"binding {settings.host} opens the dashboard to the network: set "
            "DEEPGUARD_API_TOKEN, or pass --no-token if a proxy in front authenticates"
        )
    _check_ray_address()
    # at start: the tools' own files that any preset attacks
    prepare_tool_weights([load_preset(name) for name in preset_names()], settings)
    logging.getLogger("deepguard").setLevel(logging.INFO)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                proxy_headers=True, log_level="info")  # fmt: skip
    if _received_signals:  # uvicorn stopped cleanly, then swallowed the KeyboardInterrupt
        raise KeyboardInterrupt
    return 0


def _log_level(args: argparse.Namespace) -> int:
    """-v: everything; -q: errors only (Ray's driver messages follow, see cluster.connect)."""
    if args.verbose:
        return logging.DEBUG
    return logging.ERROR if getattr(args, "quiet", False) else logging.WARNING


#: the stop signals received: the exit code says which (Ray re-raises a KeyboardInterrupt as a
#: plain one, and uvicorn swallows it)
_received_signals: list[int] = []


def _stop(signum: int, _frame: object) -> None:
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, ``docker stop``, ``ray job stop``) both stop a
    command the same way: a KeyboardInterrupt, cleaned up on its way out."""
    _received_signals.append(signum)
    if signum == signal.SIGTERM:  # a second one must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"cancelled ({signal.Signals(signum).name})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=_log_level(args), format="%(levelname)s %(name)s: %(message)s")
    handler: Handler = args.handler
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _stop)
    try:
        from deepguard.settings import get_settings

        get_settings()  # a bad variable is one line naming it, whatever the command
        return handler(args)
    except DeepguardError as error:
        print(f"deepguard: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # cleaned up on the way here: 128 + the signal's number
        signum = _received_signals[0] if _received_signals else signal.SIGINT
        terminated = signum == signal.SIGTERM
        print(f"deepguard: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
