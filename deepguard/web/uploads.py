"""Uploaded files: streamed to disk under a random name, size-limited, checked by content.

Each upload gets its own folder ``uploads/<id>/`` holding ``original.<ext>`` (the extension
from the content, never from the sender) and ``upload.json`` (the original name and what the
file is). The original name is metadata only: it never becomes part of a path.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepguard.errors import InputError
from deepguard.fileio import write_atomically
from deepguard.web.media import MediaInfo, inspect, sniff

_ID = re.compile(r"^[0-9a-f]{32}$")
_SNIFF_BYTES = 16


class UploadTooLarge(InputError):
    """The body passed the size limit; the partial file is already gone."""


class UnsupportedMedia(InputError):
    """The bytes are not a JPEG, PNG, WebP, MP4 or MOV file."""


def valid_id(value: str) -> bool:
    """Job and upload IDs are 32 lowercase hex digits; anything else is refused before any
    path is built from it (no traversal through IDs)."""
    return bool(_ID.match(value))


def display_name(name: str | None) -> str:
    """A safe label for the original file name: no folders, no control characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isprintable()).strip()
    return cleaned[:200] or "upload"


@dataclass(frozen=True)
class Upload:
    id: str
    name: str  # as the user named it, for display and download names
    path: Path
    media: MediaInfo
    bytes: int
    created: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "bytes": self.bytes,
            "created": self.created,
            **self.media.as_dict(),
        }


class UploadStore:
    def __init__(self, root: Path, max_bytes: int, max_pixels: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    async def save(self, name: str | None, body: AsyncIterator[bytes]) -> Upload:
        """Stream ``body`` to disk, then accept it only if its content is a supported file."""
        upload_id = uuid.uuid4().hex
        folder = self.root / upload_id
        folder.mkdir(parents=True)
        partial = folder / ".partial"
        try:
            size = 0
            with partial.open("wb") as handle:
                async for block in body:
                    size += len(block)
                    if size > self.max_bytes:
                        raise UploadTooLarge(
                            f"the file is larger than the limit of {self.max_bytes // 2**20} MB"
                        )
                    handle.write(block)
            if size == 0:
                raise UnsupportedMedia("the file is empty")
            with partial.open("rb") as handle:
                found = sniff(handle.read(_SNIFF_BYTES))
            if found is None:
                raise UnsupportedMedia(
                    f"{display_name(name)}: not a JPEG, PNG or WebP image, nor an MP4 or MOV video"
                )
            path = partial.rename(folder / f"original{found[1]}")
            media = await asyncio.to_thread(inspect, path, self.max_pixels)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        upload = Upload(upload_id, display_name(name), path, media, size, time.time())
        meta = {
            "name": upload.name,
            "file": path.name,
            "bytes": size,
            "created": upload.created,
            "media": media.as_dict(),
        }
        write_atomically(folder / "upload.json", json.dumps(meta).encode())
        return upload

    def get(self, upload_id: str) -> Upload:
        """The upload, or KeyError (unknown, malformed or already cleaned up)."""
        if not valid_id(upload_id):
            raise KeyError(upload_id)
        folder = self.root / upload_id
        try:
            meta = json.loads((folder / "upload.json").read_text())
        except (OSError, ValueError):
            raise KeyError(upload_id) from None
        media = MediaInfo(**meta["media"])
        return Upload(
            upload_id, meta["name"], folder / meta["file"], media, meta["bytes"], meta["created"]
        )

    def delete(self, upload_id: str) -> None:
        if valid_id(upload_id):
            shutil.rmtree(self.root / upload_id, ignore_errors=True)
