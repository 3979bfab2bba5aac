"""Weight store: find detector weights locally, or download them once and verify them.

Lookup order for every file: ``DEEPGUARD_WEIGHTS_DIR`` (read-only, e.g. a shared volume),
then the user cache (``~/.cache/deepguard``), then one download: from the operator's mirror
(``DEEPGUARD_WEIGHTS_BASE_URL``, serving ``<base>/<file name>``) first, then from the file's
public sources in order (``configs/detectors.yaml``, ``configs/tool_weights.yaml``). A source
may be an archive (insightface's ``buffalo_l.zip``): the archive is verified by its own
sha256 and size, then the member is taken out and verified in turn. Every file is checked
against its pinned sha256; downloads land in a temporary file beside the cache and are renamed
into place only once verified, so an interrupted or refused download never leaves a file that
looks finished, and a source that serves the wrong bytes is followed by the next one.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from deepguard.errors import DeepguardError
from deepguard.fileio import temporary_beside
from deepguard.settings import Settings, get_settings

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class WeightError(DeepguardError):
    """A weight file is missing, corrupt or cannot be downloaded. The message is one line."""


@dataclass(frozen=True)
class Archive:
    """An archive a file is published in: its own digest and size, and the member's name."""

    sha256: str
    member: str
    size: int | None = None


@dataclass(frozen=True)
class Source:
    """One public place a file can be fetched from: the file itself, or an ``archive``."""

    url: str
    archive: Archive | None = None


@dataclass(frozen=True)
class WeightFile:
    """One file a detector needs, as pinned in ``configs/detectors.yaml`` (or in the tools'
    catalogue, ``configs/tool_weights.yaml``, with its size and several sources)."""

    name: str
    sha256: str | None
    url: str | None = None
    size: int | None = None
    sources: tuple[Source, ...] = ()

    @property
    def public_sources(self) -> tuple[Source, ...]:
        """Where the file is published, in the order to try (``url`` is one source)."""
        return self.sources or ((Source(self.url),) if self.url else ())


#: called with (bytes received, bytes expected or None) while a download runs
DownloadProgress = Callable[[int, int | None], None]


class WeightStatus(StrEnum):
    AVAILABLE = "available"
    MISSING = "missing"
    MISMATCH = "checksum mismatch"
    UNPINNED = "available (no pinned sha256)"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class WeightStore:
    """Resolves weight files to verified local paths."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()

    @property
    def search_dirs(self) -> list[Path]:
        dirs = [self.settings.weights_dir] if self.settings.weights_dir else []
        return [*dirs, self.settings.weights_cache_dir]

    def _candidates(self, file: WeightFile) -> Iterable[Path]:
        for folder in self.search_dirs:
            path = folder / file.name
            if path.is_file():
                yield path

    def status(self, file: WeightFile) -> tuple[WeightStatus, Path | None]:
        """What a lookup would find, without downloading."""
        mismatch: Path | None = None
        for path in self._candidates(file):
            if file.sha256 is None:
                return WeightStatus.UNPINNED, path
            if sha256_of(path) == file.sha256:
                return WeightStatus.AVAILABLE, path
            mismatch = mismatch or path
        if mismatch is not None:
            return WeightStatus.MISMATCH, mismatch
        return WeightStatus.MISSING, None

    def resolve(self, file: WeightFile, download: bool = True) -> Path:
        """A verified local path for ``file``, downloading it once if allowed."""
        state, path = self.status(file)
        if state in (WeightStatus.AVAILABLE, WeightStatus.UNPINNED):
            assert path is not None
            return path
        if state is WeightStatus.MISMATCH and not download:
            raise WeightError(
                f"weight file {path} does not match its pinned sha256 {file.sha256[:12]}…; "
                f"delete it and run `deepguard models fetch`, or replace it with the right file"
            )
        if not download:
            raise WeightError(self._missing_message(file))
        return self.download(file)

    def _sources(self, file: WeightFile) -> list[Source]:
        """The operator's mirror first (the file itself, by name), then the public sources."""
        mirror = self.settings.weights_base_url
        mirrored = [Source(f"{mirror.rstrip('/')}/{file.name}")] if mirror else []
        return [*mirrored, *file.public_sources]

    def _missing_message(self, file: WeightFile) -> str:
        where = ", ".join(str(d) for d in self.search_dirs)
        return (
            f"weight file {file.name} not found (looked in {where}); put it in "
            f"DEEPGUARD_WEIGHTS_DIR or set DEEPGUARD_WEIGHTS_BASE_URL to a mirror that serves it"
        )

    def download(
        self,
        file: WeightFile,
        timeout: float | None = None,
        progress: DownloadProgress | None = None,
    ) -> Path:
        """Download ``file`` into the cache from the first source that serves the right
        bytes, verified, moved into place atomically. ``timeout``: seconds a connection or a
        read may stall (default ``DEEPGUARD_DOWNLOAD_TIMEOUT``)."""
        sources = self._sources(file)
        if not sources:
            raise WeightError(self._missing_message(file) + " (it has no public download URL)")
        if file.sha256 is None and not self.settings.allow_unpinned_weights:
            raise WeightError(
                f"weight file {file.name} has no sha256 pinned in configs/detectors.yaml; pin it, "
                f"or set DEEPGUARD_ALLOW_UNPINNED_WEIGHTS=true to accept it unverified"
            )
        cache = self.settings.weights_cache_dir
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise WeightError(f"cannot create weight cache {cache}: {error.strerror}") from None
        timeout = self.settings.download_timeout_s if timeout is None else timeout
        failures = []
        for source in sources:
            try:
                return self._fetch(file, source, cache / file.name, timeout, progress)
            except WeightError as error:
                log.warning("%s", error)
                failures.append(str(error))
        raise WeightError("; then ".join(failures))

    def _fetch(
        self,
        file: WeightFile,
        source: Source,
        target: Path,
        timeout: float,
        progress: DownloadProgress | None,
    ) -> Path:
        """``file`` from one ``source`` into ``target``, or a :class:`WeightError`."""
        log.info("downloading %s from %s", file.name, source.url)
        archive = source.archive
        handle, tmp = temporary_beside(target)
        os.close(handle)
        packed = None
        try:
            if archive is None:
                actual, size = _get(source.url, tmp, timeout, progress)
                expected, label = file.sha256, file.name
            else:
                packed = tmp.with_name(tmp.name + ".zip")
                actual, size = _get(source.url, packed, timeout, progress)
                expected, label = archive.sha256, source.url.rsplit("/", 1)[-1]
            wanted_size = file.size if archive is None else archive.size
            if wanted_size is not None and size != wanted_size:
                raise WeightError(
                    f"download of {label} from {source.url} has {size} bytes, expected "
                    f"{wanted_size}; the source serves a different file"
                )
            if expected is not None and actual != expected:
                raise WeightError(
                    f"download of {label} from {source.url} has sha256 {actual[:12]}…, "
                    f"expected {expected[:12]}…; the mirror serves a different file"
                )
            if packed is not None:
                assert archive is not None
                actual = _extract(packed, archive.member, tmp, source.url)
                if file.sha256 is not None and actual != file.sha256:
                    raise WeightError(
                        f"{archive.member} in {source.url} has sha256 {actual[:12]}…, "
                        f"expected {file.sha256[:12]}…; the archive holds a different file"
                    )
            os.replace(tmp, target)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
            raise WeightError(f"cannot download {file.name} from {source.url}: {reason}") from None
        finally:
            tmp.unlink(missing_ok=True)
            if packed is not None:
                packed.unlink(missing_ok=True)
        return target


def _get(
    url: str, path: Path, timeout: float, progress: DownloadProgress | None
) -> tuple[str, int]:
    """Stream ``url`` into ``path`` (fsynced); its sha256 and size. A body shorter than its
    Content-Length is a :class:`WeightError`."""
    digest = hashlib.sha256()
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "deepguard"})
    with urllib.request.urlopen(request, timeout=timeout) as response, path.open("wb") as out:
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            if progress:
                progress(received, expected)
        if expected is not None and received != expected:
            name = url.rsplit("/", 1)[-1]
            raise WeightError(
                f"download of {name} from {url} was cut off ({received} of {expected} bytes); "
                "try again"
            )
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), received


def _extract(archive: Path, member: str, target: Path, url: str) -> str:
    """Copy ``member`` (matched by its base name anywhere in the zip) into ``target``; its
    sha256."""
    try:
        with zipfile.ZipFile(archive) as packed:
            names = [n for n in packed.namelist() if n.rsplit("/", 1)[-1] == member]
            if not names:
                raise WeightError(f"{url} holds no {member}")
            digest = hashlib.sha256()
            with packed.open(names[0]) as source, target.open("wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                out.flush()
                os.fsync(out.fileno())
    except zipfile.BadZipFile as error:
        raise WeightError(f"{url} is not a readable zip archive: {error}") from None
    return digest.hexdigest()
