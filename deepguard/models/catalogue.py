"""The face-swap tools' own detector files (``configs/tool_weights.yaml``).

Every tool downloads its detector on first run from a public address, and public manifests
pin those files by sha256. A machine that can reach them fetches the very same files, so the
attack is white-box against what the tools run instead of a stand-in. The catalogue says,
per file: the registry detector that loads it, its digest and size, its licence, who runs
it, and where it is published (in order; an archive is verified before its member is taken
out). :class:`~deepguard.models.store.WeightStore` does the fetching.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from deepguard.models.store import Archive, Source, WeightFile, WeightStatus, WeightStore


@dataclass(frozen=True)
class ToolWeight:
    """One file of the catalogue."""

    file: WeightFile
    detector: str
    title: str
    licence: str
    tools: str


@cache
def tool_weights() -> dict[str, ToolWeight]:
    """The catalogue, by file name, in the order of ``configs/tool_weights.yaml``."""
    text = resources.files("deepguard.configs").joinpath("tool_weights.yaml").read_text("utf-8")
    table = yaml.safe_load(text)["files"]
    catalogue = {}
    for name, entry in table.items():
        sources = tuple(
            Source(
                source["url"],
                Archive(**source["archive"]) if source.get("archive") else None,
            )
            for source in entry["sources"]
        )
        catalogue[name] = ToolWeight(
            file=WeightFile(name, entry["sha256"], size=entry["size"], sources=sources),
            detector=entry["detector"],
            title=entry["title"],
            licence=entry["licence"],
            tools=entry["tools"],
        )
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
