"""Joining Ray: a local cluster by default, the one ``RAY_ADDRESS`` names otherwise."""

from __future__ import annotations

import logging

import ray

from deepguard.errors import DeepguardError
from deepguard.settings import Settings

log = logging.getLogger(__name__)


def connect(settings: Settings) -> None:
    """Start or join Ray once per process; an unreachable cluster is a one-line error."""
    if ray.is_initialized():
        return
    address = settings.ray_address
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"at {address}" if address else "locally"
        raise DeepguardError(f"cannot start or reach a Ray cluster {where}: {error}") from None
    log.info("ray resources: %s", ray.cluster_resources())


def cluster_devices() -> tuple[int, int]:
    """(CPUs, GPUs) the cluster offers, as whole numbers."""
    resources = ray.cluster_resources()
    return int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
