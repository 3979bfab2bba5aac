"""A fast, seeded sample of the fuzz suite for ``protect`` (tests/fuzzing.py): every generated
bad input ends in a success or a clean refusal, in time, leaving no file behind.
``python bench/fuzz.py`` runs the long version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings

from tests.fuzzing import (
    Case,
    FileCase,
    clip_seeds,
    fresh_folder,
    image_seeds,
    protect_cases,
    run_protect_case,
)


# the same cases on every run (CI must not find a new input by chance), and no shrinking
#: database written into the checkout
def sample(cases: int) -> settings:
    return settings(max_examples=cases, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _stop_local_ray() -> Iterator[None]:
    """Clips that decode run on a local Ray started in this process; stop it afterwards."""
    yield
    import ray

    ray.shutdown()


def _check(case: Case, root: Path) -> None:
    outcome = run_protect_case(case, fresh_folder(root), limit_s=120)
    assert outcome.clean, f"{outcome.kind}: {outcome.detail} <- {case}"


def test_fuzzed_images_succeed_or_are_refused_cleanly(media_dir: Path, tmp_path: Path) -> None:
    @sample(80)
    @given(case=protect_cases(image_seeds(media_dir)))
    def check(case: Case) -> None:
        _check(case, tmp_path)

    check()


def test_fuzzed_clips_succeed_or_are_refused_cleanly(videos_dir: Path, tmp_path: Path) -> None:
    seeds = clip_seeds(videos_dir, tmp_path / "seeds")

    @sample(4)
    @given(case=protect_cases(seeds, generated=False))
    @example(case=FileCase("talk.mp4", seeds["talk.mp4"], "unchanged"))  # through Ray, whole
    def check(case: Case) -> None:
        _check(case, tmp_path)

    check()
