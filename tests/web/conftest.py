"""The dashboard sends its jobs to Ray: a local cluster started by the code under test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def _stop_local_ray() -> Iterator[None]:
    """Each module's jobs start a local Ray in this process; stop it when the module ends."""
    yield
    import ray

    ray.shutdown()
