"""The face-swap tools' own detector files (``configs/tool_weights.yaml``).

Every tool downloads its detector on first run from a public address, and public manifests
pin those files by sha256. A machine that can reach them fetches the very same files, so the
attack is white-box against what the tools run instead of a stand-in. The catalogue says,
per file: the registry detector that loads it, its digest and size, its licence, who runs
it, and where it is published (in order; an archive is verified before its member is taken
out). :class:`~deepguard.models.store.WeightStore` does the fetching.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from deepguard.errors import DeepguardError
from deepguard.models.store import (
    Archive,
    DownloadProgress,
    Source,
    WeightError,
    WeightFile,
    WeightStatus,
    WeightStore,
)
from deepguard.settings import get_settings
from deepguard.tables import builtin_then_operator


@dataclass(frozen=True)
class ToolWeight:
    """One file of the catalogue."""

    file: WeightFile
    detector: str
    title: str
    licence: str
    tools: str


def tool_weights() -> dict[str, ToolWeight]:
    """The catalogue, by file name, in the order of ``configs/tool_weights.yaml``; entries of
    an operator's file of the same shape (``DEEPGUARD_TOOL_WEIGHTS_FILE``: a newer release,
    an in-house mirror) add to it or replace the built-in ones of the same name."""
    return _catalogue_from(get_settings().tool_weights_file)


@cache
def _catalogue_from(extra: Path | None) -> dict[str, ToolWeight]:
    catalogue: dict[str, ToolWeight] = {}
    for table, source in builtin_then_operator(
        "tool_weights.yaml", extra, "DEEPGUARD_TOOL_WEIGHTS_FILE"
    ):
        catalogue.update(_parse(table, source))
    return catalogue


def _parse(table: object, source: str) -> dict[str, ToolWeight]:
    if not isinstance(table, dict) or not isinstance(table.get("files"), dict):
        raise DeepguardError(f"{source}: expected a mapping with a 'files:' table")
    catalogue = {}
    for name, entry in table["files"].items():
        try:
            sources = tuple(
                Source(
                    source["url"],
                    Archive(**source["archive"]) if source.get("archive") else None,
                )
                for source in entry["sources"]
            )
            catalogue[name] = ToolWeight(
                file=WeightFile(name, entry["sha256"], size=entry.get("size"), sources=sources),
                detector=entry["detector"],
                title=entry["title"],
                licence=entry["licence"],
                tools=entry["tools"],
            )
        except (KeyError, TypeError) as error:
            raise DeepguardError(
                f"{source}: file {name!r}: missing or wrong field {error}"
            ) from None
    return catalogue


def by_detector() -> dict[str, ToolWeight]:
    """The catalogue by the registry detector that loads each file."""
    return {entry.detector: entry for entry in tool_weights().values()}


#: the digest checks already made in this process, by (path, size, modification time)
_verified: dict[tuple[str, int, int], bool] = {}


def present(store: WeightStore | None = None) -> set[str]:
    """The catalogue's detectors whose file is here and verified (nothing is downloaded).
    A file's digest is computed once per process (the large ones take a second)."""
    store = store or WeightStore()
    found = set()
    for entry in tool_weights().values():
        for folder in store.search_dirs:
            path = folder / entry.file.name
            if not path.is_file():
                continue
            stat = path.stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            if key not in _verified:
                _verified[key] = store.status(entry.file)[0] is WeightStatus.AVAILABLE
            if _verified[key]:
                found.add(entry.detector)
                break
    return found


@dataclass
class Fetched:
    """What :func:`fetch` did with one file: ``path`` (already here, or fetched now, then
    ``new``), or the ``error`` every source gave."""

    entry: ToolWeight
    path: Path | None = None
    new: bool = False
    error: str | None = None


def fetch(
    entries: list[ToolWeight],
    store: WeightStore | None = None,
    timeout: float | None = None,
    progress: Callable[[ToolWeight], DownloadProgress | None] | None = None,
) -> list[Fetched]:
    """Each of ``entries`` into the weight cache unless it is here already: the operator's
    mirror first, then its sources in order, verified (:meth:`WeightStore.download`).
    ``progress`` gives a callback per file for its download."""
    store = store or WeightStore()
    results = []
    for entry in entries:
        state, path = store.status(entry.file)
        if state is WeightStatus.AVAILABLE:
            results.append(Fetched(entry, path))
            continue
        try:
            path = store.download(entry.file, timeout, progress(entry) if progress else None)
            results.append(Fetched(entry, path, new=True))
        except WeightError as error:
            results.append(Fetched(entry, error=str(error)))
    return results
