"""Joining Ray: a local cluster by default, the one ``RAY_ADDRESS`` names otherwise.

Ray clusters authenticate clients with a token by default. Ray itself only presents a token
to a cluster it found on its own; deepguard also presents it to the cluster ``RAY_ADDRESS``
names, when one is available (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``) and the operator
has not chosen a mode with ``RAY_AUTH_MODE``.

``ray.init`` takes SIGTERM over: its crash handler aborts the process on SIGTERM (no clean-up,
the job left running, a partial file left behind). :func:`connect` gives SIGTERM back to
whoever handled it before. A local cluster's processes die with the thread that started them,
so a worker thread (the dashboard's, the watch folder's) has a lasting thread start it; the
cluster is stopped, every process of it, when this process exits.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import logging
import math
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psutil
import ray
from ray.exceptions import RayActorError, RayTaskError

from deepguard.errors import DeepguardError
from deepguard.settings import Settings

log = logging.getLogger(__name__)


class _KeptDefaultNotice(logging.Filter):
    """Drops Ray's notice that token authentication is on: deepguard keeps that default on
    purpose (see the README), so the notice is noise on every run, quiet or not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
    _KeptDefaultNotice()
)

_connecting = threading.Lock()  # the dashboard's job threads may all connect at once
#: the processes ``ray.init`` started for a local cluster (none when joining one)
_local_cluster: list[psutil.Process] = []


def connect(settings: Settings) -> None:
    """Start or join Ray once per process; an unreachable cluster is a one-line error."""
    with _connecting:
        if ray.is_initialized():
            return
        match_ray_log_level()
        address = settings.ray_address
        children = {child.pid for child in psutil.Process().children()}
        try:
            with _sigterm_kept():
                if address:
                    _check_reachable(address)
                    present_token_if_available()
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
                else:  # "local": a cluster of our own, not the last one `ray start` began
                    # on this machine, which a bare ray.init() joins (and then fills with our
                    # actors, or waits on for CPUs its other drivers hold)
                    _from_a_lasting_thread(functools.partial(
                        ray.init, address="local", include_dashboard=False,
                        log_to_driver=False, configure_logging=False))  # fmt: skip
        except (ConnectionError, RuntimeError, ValueError, OSError) as error:
            where = f"at {address}" if address else "locally"
            raise DeepguardError(f"cannot start or reach a Ray cluster {where}: {error}") from None
        started = [child for child in psutil.Process().children() if child.pid not in children]
        if started:
            _local_cluster[:] = started
            atexit.register(shutdown)  # runs before Ray's own exit hook, registered earlier
    log.info("ray resources: %s", ray.cluster_resources())


def check_address(settings: Settings) -> None:
    """When ``RAY_ADDRESS`` names a cluster, make sure it is one, before any work starts: a
    command that would hand work to it fails in seconds with what answered there."""
    address = settings.ray_address
    if not address:
        return
    try:
        _check_reachable(address)
    except ConnectionError as error:
        raise DeepguardError(f"RAY_ADDRESS={address}: {error}") from None


def shutdown(grace_s: float = 5.0) -> None:
    """Leave Ray; a local cluster this process started stops, all of it.

    ``ray.shutdown`` gives each of its processes a second and then kills it. A raylet killed
    that way strands its dashboard and runtime-env agents: they wait on the dead GCS for a
    minute, ignoring SIGTERM. Whatever of the cluster outlives the grace time is killed."""
    processes = []
    for process in _local_cluster:
        try:
            processes += [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    _local_cluster.clear()
    ray.shutdown()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        log.warning("stopping %s (pid %d), left over from the local Ray cluster",
                    process.name(), process.pid)  # fmt: skip
        process.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def _from_a_lasting_thread(start: Callable[[], Any]) -> None:
    """Run ``start`` (``ray.init``) in a thread that lives as long as the process.

    Ray has the kernel kill the processes of a local cluster when the thread that started
    them ends (``PR_SET_PDEATHSIG``). A pool thread ends as the process exits, before the
    cluster can be stopped: the raylet dies and its agents are stranded."""
    if threading.current_thread() is threading.main_thread():
        start()
        return
    failure: list[BaseException] = []
    started = threading.Event()

    def run() -> None:
        try:
            start()
        except BaseException as error:  # handed to the caller below
            failure.append(error)
        started.set()
        threading.Event().wait()  # to the end of the process (a daemon is not waited for)

    threading.Thread(target=run, name="ray-cluster-owner", daemon=True).start()
    started.wait()
    if failure:
        raise failure[0]


@contextmanager
def _sigterm_kept() -> Iterator[None]:
    """Give SIGTERM back to its handler once ``ray.init`` has replaced it (Ray installs a
    Python handler in the main thread, and a crash handler that aborts, from any thread)."""
    handler = signal.getsignal(signal.SIGTERM)
    action = _get_sigaction(signal.SIGTERM)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread() and handler is not None:
            signal.signal(signal.SIGTERM, handler)
        elif action is not None:  # signal.signal refuses outside the main thread
            _set_sigaction(signal.SIGTERM, action)


def _get_sigaction(signum: int) -> ctypes.Array | None:
    """The process's raw action for ``signum``, as opaque bytes (None without sigaction)."""
    if sys.platform == "win32":
        return None
    action = ctypes.create_string_buffer(1024)  # more than any platform's struct sigaction
    return action if _libc().sigaction(signum, None, action) == 0 else None


def _set_sigaction(signum: int, action: ctypes.Array) -> None:
    _libc().sigaction(signum, action, None)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def match_ray_log_level() -> None:
    """Ray logs on the driver (its token notice, say) at this program's level or above, so
    ``deepguard protect -q`` prints nothing but errors; Ray itself logs at INFO and up."""
    ours = logging.getLogger().getEffectiveLevel()
    logging.getLogger("ray").setLevel(max(logging.INFO, ours))


def get_result(ref: ray.ObjectRef, *siblings: ray.ObjectRef) -> Any:
    """``ray.get``, with a failure inside a task or actor turned back into the one-line error
    the user should read (our own errors keep their type).

    ``siblings`` are the other results of the same call (``num_returns``), which fail with
    it; they are waited for, not fetched, so none is left unread (see :func:`settle`).
    """
    if siblings:
        settle([ref, *siblings], timeout_s=None)
    try:
        return ray.get(ref)
    except RayTaskError as error:
        cause = error.cause
        if isinstance(cause, DeepguardError):
            raise type(cause)(str(cause)) from None
        raise DeepguardError(f"a pipeline stage failed: {cause!r}") from None
    except RayActorError as error:
        raise DeepguardError(f"a pipeline worker died: {error}") from None


def settle(refs: Sequence[ray.ObjectRef], timeout_s: float | None = 30.0) -> None:
    """Wait for ``refs`` without fetching them, which marks their failures as read.

    Ray prints every failed result that is dropped unread as an "Unhandled error" with the
    remote traceback, long after the one-line error the user should see. Results still
    pending when a run is given up end at once when their actors are killed, so settle them
    after that.
    """
    if refs:
        ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s, fetch_local=False)


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not after Ray's minute of retries (or never), when what listens at
    ``address`` is not Ray: nothing at all, or a server that does not speak gRPC (a web
    server, say; a Ray head's GCS and its client server both speak gRPC over HTTP/2)."""
    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    host = host or "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as error:
        raise ConnectionError(f"nothing answers there ({error})") from None
    import grpc  # Ray's own dependency

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise ConnectionError(
            f"that is not a Ray cluster: {what_answers(host, int(port))} (a Ray head takes "
            "clients on its GCS port, 6379 by default, or ray://HOST:10001)"
        ) from None
    finally:
        channel.close()


def what_answers(host: str, port: int, timeout_s: float = 2.0) -> str:
    """What a server at ``host:port`` says to a plain HTTP request: its first line, for an
    error message."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.sendall(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
            first = connection.recv(200).split(b"\r\n", 1)[0]
    except OSError:
        first = b""
    line = first.decode("latin-1").strip()
    if line:
        return f"it answered {line!r} and no gRPC"
    return "it accepted the connection and answered no gRPC"


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
