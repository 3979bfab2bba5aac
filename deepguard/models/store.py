"""Weight store: find detector weights locally, or download them once and verify them.

Lookup order for every file: ``DEEPGUARD_WEIGHTS_DIR`` (read-only, e.g. a shared volume),
then the user cache (``~/.cache/deepguard``), then one download from the configured mirror
(``DEEPGUARD_WEIGHTS_BASE_URL``) or the upstream URL in ``configs/detectors.yaml``. Every file
is checked against its pinned sha256; downloads land in a temporary file and are renamed into
place only once verified, so an interrupted download never leaves a file that looks finished.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
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
class WeightFile:
    """One file a detector needs, as pinned in ``configs/detectors.yaml``."""

    name: str
    sha256: str | None
    url: str | None = None


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

    def _source_url(self, file: WeightFile) -> str | None:
        if self.settings.weights_base_url:
            return f"{self.settings.weights_base_url.rstrip('/')}/{file.name}"
        return file.url

    def _missing_message(self, file: WeightFile) -> str:
        where = ", ".join(str(d) for d in self.search_dirs)
        return (
            f"weight file {file.name} not found (looked in {where}); put it in "
            f"DEEPGUARD_WEIGHTS_DIR or set DEEPGUARD_WEIGHTS_BASE_URL to a mirror that serves it"
        )

    def download(self, file: WeightFile) -> Path:
        """Download ``file`` into the cache, verify it, and move it into place atomically."""
        url = self._source_url(file)
        if url is None:
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
        target = cache / file.name
        log.info("downloading %s from %s", file.name, url)
        handle, tmp = temporary_beside(target)
        try:
            digest = hashlib.sha256()
            with os.fdopen(handle, "wb") as out:
                request = urllib.request.Request(url, headers={"User-Agent": "deepguard"})
                with urllib.request.urlopen(request, timeout=self.settings.download_timeout_s) as r:
                    expected = r.headers.get("Content-Length")
                    received = 0
                    while chunk := r.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                if expected is not None and received != int(expected):
                    raise WeightError(
                        f"download of {file.name} from {url} was cut off "
                        f"({received} of {expected} bytes); try again"
                    )
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if file.sha256 is not None and actual != file.sha256:
                raise WeightError(
                    f"download of {file.name} from {url} has sha256 {actual[:12]}…, "
                    f"expected {file.sha256[:12]}…; the mirror serves a different file"
                )
            os.replace(tmp, target)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
            raise WeightError(f"cannot download {file.name} from {url}: {reason}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return target
