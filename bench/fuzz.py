"""Fuzz ``deepguard protect`` with generated bad inputs and print the counts.

    python bench/fuzz.py --target image --cases 10000 [--seed 1] [--limit 60]
    python bench/fuzz.py --target video --cases 200
    python bench/fuzz.py --target upload --cases 10000

Cases come from Hypothesis (``tests/fuzzing.py``): real media from ../shared, truncated,
bit-flipped, with a wrong magic or huge header fields, generated tiny and odd images, and
things that are not regular files. Each runs through the CLI's entry function in this
process, with a cheap but real attack. Printed: cases, clean refusals (exit 2, one line),
successes (exit 0) and crashes (a traceback, another exit code, a hang past ``--limit``
seconds, or a file left behind), with the first crashes' inputs.

A target is a name in :data:`TARGETS`: how to draw a case and how to run one. Another
target (e.g. the dashboard's upload) plugs in as ``Target(strategy, run)`` where ``run``
takes a case and a fresh work folder and returns an :class:`Outcome`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/fuzzing.py: the strategies the CI sample uses too
os.environ.setdefault("DEEPGUARD_WEIGHTS_DIR", str(REPO.parent / "shared" / "weights"))

from hypothesis import strategies as st  # noqa: E402

from tests.fuzzing import (  # noqa: E402
    Counts,
    Kind,
    Outcome,
    clip_seeds,
    fresh_folder,
    image_seeds,
    protect_cases,
    run_cases,
    run_protect_case,
)

SHARED = REPO.parent / "shared" / "media"


@dataclass(frozen=True)
class Target:
    """What to fuzz: ``strategy(work)`` builds the case strategy (seeds may be written under
    ``work``); ``run(case, folder, limit_s)`` runs one case in the empty ``folder``."""

    strategy: Callable[[Path], st.SearchStrategy]
    run: Callable[[object, Path, float], Outcome]


def _upload_target() -> Target:
    """The dashboard's upload API, in process (``bench/fuzz_upload.py``): one app and client
    for the whole run, as a server would serve every upload."""
    from bench.fuzz_upload import fuzz_upload_case, make_client, upload_cases

    clients: dict = {}

    def run(case: object, folder: Path, limit_s: float) -> Outcome:
        client = clients.setdefault("app", make_client(folder.parent / "upload-data"))
        data, name = case
        result = fuzz_upload_case(client, data, name, limit_s)
        if result == "refused":
            return Outcome(Kind.REFUSAL)
        if result == "accepted":
            return Outcome(Kind.SUCCESS)
        return Outcome(Kind.CRASH, result.removeprefix("crash:"))

    return Target(lambda work: upload_cases(), run)


TARGETS: dict[str, Target] = {
    "image": Target(lambda work: protect_cases(image_seeds(SHARED / "images")), run_protect_case),
    "video": Target(
        lambda work: protect_cases(clip_seeds(SHARED / "videos", work / "seeds"), generated=False),
        run_protect_case,
    ),
    "upload": _upload_target(),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=sorted(TARGETS), default="image")
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1, help="Hypothesis seed (repeatable runs)")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds before a case hangs")
    parser.add_argument("--every", type=int, default=500, help="print progress every N cases")
    args = parser.parse_args()
    target = TARGETS[args.target]
    started = time.perf_counter()

    shown = 0

    def progress(counts: Counts) -> None:
        nonlocal shown
        for failure in counts.failures[shown:]:  # as they come: a long run shows them early
            print("  " + failure, flush=True)
        shown = len(counts.failures)
        if counts.cases % args.every == 0:
            rate = counts.cases / (time.perf_counter() - started)
            print(f"{counts.cases} cases, {counts.crashes} crashes, {rate:.1f}/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="deepguard-fuzz-") as root:
        work = Path(root)
        os.environ.setdefault("DEEPGUARD_DATA_DIR", str(work / "data"))  # the job store
        strategy = target.strategy(work)
        counts = run_cases(
            strategy,
            lambda case: target.run(case, fresh_folder(work), args.limit),
            args.cases,
            args.seed,
            progress,
        )
    seconds = time.perf_counter() - started
    print(f"target {args.target}, seed {args.seed}: {counts.cases} cases in {seconds:.0f} s "
          f"({counts.cases / seconds:.1f} per second)")  # fmt: skip
    print("\n".join(counts.lines()))
    if args.target == "video":
        import ray

        ray.shutdown()
    return 1 if counts.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
