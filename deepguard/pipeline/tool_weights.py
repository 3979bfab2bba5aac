"""First use: fetch the tools' own detector files a preset attacks, before the first job.

``protect``, ``serve`` and ``watch`` call :func:`prepare_tool_weights` when they start. Each
file of ``configs/tool_weights.yaml`` that the preset would attack in place of a stand-in (or
beside the ensemble) and that is not here yet is fetched once into the weight cache, verified
by its published sha256, with a progress bar; its licence is printed when it arrives. A
network that does not answer within ``DEEPGUARD_TOOL_WEIGHTS_TIMEOUT`` seconds, a refused
source or a wrong hash never fails a job: one line says which tools are judged on stand-ins,
and the next start tries again. ``DEEPGUARD_TOOL_WEIGHTS=off`` turns the fetch off (what is
here already is still used).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import TextIO

from tqdm import tqdm

from deepguard.attack.config import AttackConfig
from deepguard.attack.profiles import enabled_profiles
from deepguard.models.catalogue import Fetched, ToolWeight, fetch, tool_weights
from deepguard.models.store import DownloadProgress, WeightStore
from deepguard.settings import Settings, get_settings


def wanted_files(configs: Iterable[AttackConfig], gpu: bool) -> list[ToolWeight]:
    """The catalogue files the ``configs`` would attack if they were here."""
    detectors: set[str] = set()
    for config in configs:
        detectors |= set(config.own_weights.values()) | set(config.own_weights_join)
        if gpu:
            detectors |= set(config.own_weights_join_gpu)
    return [entry for entry in tool_weights().values() if entry.detector in detectors]


def prepare_tool_weights(
    configs: Iterable[AttackConfig],
    settings: Settings | None = None,
    out: TextIO = sys.stderr,
    bars: bool = True,
) -> list[Fetched]:
    """Fetch what the ``configs`` attack and is missing; say what happened in a line or two.
    Never raises for a network or a source: the tools are then judged on stand-ins."""
    settings = settings or get_settings()
    configs = list(configs)
    if not settings.tool_weights:
        return []
    gpu = settings.resolved_device().startswith("cuda")
    results = fetch(
        wanted_files(configs, gpu),
        WeightStore(settings),
        timeout=settings.tool_weights_timeout_s,
        progress=progress_bars(out) if bars else None,
    )
    for result in results:
        if result.new:
            entry = result.entry
            print(f"deepguard: fetched {entry.file.name} ({entry.title}) for {entry.tools}; "
                  f"licence: {entry.licence}", file=out)  # fmt: skip
    failed = {result.entry.detector for result in results if result.error}
    if failed:
        tools = [
            profile.title
            for config in configs
            for profile in enabled_profiles(config.tools, config.extra_tools)
            if failed & set(profile.own.values())
        ]
        reason = next(result.error for result in results if result.error)
        print(f"deepguard: the tools' own detectors could not be fetched ({_short(reason)}); "
              f"judged on stand-ins: {', '.join(dict.fromkeys(tools)) or 'none'}; the next "
              "start tries again", file=out)  # fmt: skip
    return results


def progress_bars(out: TextIO) -> Callable[[ToolWeight], DownloadProgress]:
    """A progress bar per download, on ``out``."""

    def for_file(entry: ToolWeight) -> DownloadProgress:
        bar = tqdm(total=entry.file.size, desc=entry.file.name, unit="B", unit_scale=True,
                   file=out, leave=False, disable=None)  # fmt: skip
        seen = [0]

        def advance(received: int, total: int | None) -> None:
            if total and bar.total != total:
                bar.total = total
            bar.update(received - seen[0])
            seen[0] = received
            if total and received >= total:
                bar.close()

        return advance

    return for_file


def _short(reason: str, limit: int = 160) -> str:
    """The first source's failure, cut to one readable clause."""
    first = reason.split("; then ")[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"
