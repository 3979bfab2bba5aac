"""Joining Ray: a local cluster by default, the one ``RAY_ADDRESS`` names otherwise.

Ray clusters authenticate clients with a token by default. Ray itself only presents a token
to a cluster it found on its own; deepguard also presents it to the cluster ``RAY_ADDRESS``
names, when one is available (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``) and the operator
has not chosen a mode with ``RAY_AUTH_MODE``.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

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
