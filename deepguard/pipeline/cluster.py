"""Joining Ray: a local cluster by default, the one ``RAY_ADDRESS`` names otherwise.

Ray clusters authenticate clients with a token by default. Ray itself only presents a token
to a cluster it found on its own; deepguard also presents it to the cluster ``RAY_ADDRESS``
names, when one is available (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``) and the operator
has not chosen a mode with ``RAY_AUTH_MODE``.
"""

from __future__ import annotations

import logging
import math
import socket
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from deepguard.errors import DeepguardError
from deepguard.settings import Settings

log = logging.getLogger(__name__)


class _KeptDefaultNotice(logging.Filter):
    """Drops Ray's notice that it turned token authentication on for a cluster it starts:
    deepguard keeps that default on purpose (see the README), and ``protect -q`` prints
    nothing but errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
    _KeptDefaultNotice()
)


def connect(settings: Settings) -> None:
    """Start or join Ray once per process; an unreachable cluster is a one-line error."""
    if ray.is_initialized():
        return
    address = settings.ray_address
    try:
        if address:
            _check_reachable(address)
            present_token_if_available()
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"at {address}" if address else "locally"
        raise DeepguardError(f"cannot start or reach a Ray cluster {where}: {error}") from None
    log.info("ray resources: %s", ray.cluster_resources())


def get_result(ref: ray.ObjectRef) -> Any:
    """``ray.get``, with a failure inside a task or actor turned back into the one-line error
    the user should read (our own errors keep their type)."""
    try:
        return ray.get(ref)
    except RayTaskError as error:
        cause = error.cause
        if isinstance(cause, DeepguardError):
            raise type(cause)(str(cause)) from None
        raise DeepguardError(f"a pipeline stage failed: {cause!r}") from None
    except RayActorError as error:
        raise DeepguardError(f"a pipeline worker died: {error}") from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not after Ray's minute of retries, when nothing listens there."""
    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as error:
        raise ConnectionError(f"nothing answers there ({error})") from None


def present_token_if_available() -> None:
    """What ``ray.init()`` does for a cluster it finds itself (Ray's own helper, which also
    refreshes Ray's cached config; the environment variable alone comes too late)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def cluster_devices() -> tuple[int, int]:
    """(CPUs, GPUs) the cluster offers, as whole numbers."""
    resources = ray.cluster_resources()
    return int(resources.get("CPU", 1)), int(resources.get("GPU", 0))


def cluster_device(settings: Settings, gpus: int) -> str:
    """Where the attack actors run: ``DEEPGUARD_DEVICE`` judged against the cluster's GPUs,
    not the driver's (a CPU-only driver may well submit to GPU workers)."""
    if settings.device == "cpu" or (settings.device == "auto" and not gpus):
        return "cpu"
    if not gpus:
        raise DeepguardError("DEEPGUARD_DEVICE=cuda, but the Ray cluster offers no GPU")
    return "cuda"


#: the GPU share of each single stage actor of a video that runs detectors (the tracker, the
#: smoother): Ray hides the GPUs from an actor that asks for none
SINGLE_STAGE_GPU_SHARE = 0.05
#: kept free on every card for them, so they fit wherever Ray places them
_KEPT_PER_CARD = 2 * SINGLE_STAGE_GPU_SHARE


def actors_per_gpu(settings: Settings) -> int:
    """Attack actors that share one card: ``1 / DEEPGUARD_GPU_SHARE``."""
    return max(1, int(1 / settings.gpu_share + 1e-9))


def attack_gpu_share(settings: Settings) -> float:
    """What each attack actor of a video asks Ray for: an equal part of what every card has
    left once the single stages' share is kept (so no placement can leave an actor waiting)."""
    share = (1 - _KEPT_PER_CARD) / actors_per_gpu(settings)
    return math.floor(share * 10_000) / 10_000  # Ray counts GPU shares in units of 0.0001
