"""Files of the Batch API: uploaded inputs and the batches' outputs, in one folder.

A file is two entries of ``Settings.files_dir``: ``<id>`` (its bytes) and ``<id>.json`` (OpenAI's
file object and its owner). The object is written last, by a rename, so a file is listed only once
its bytes are all there; the folder is the only record, so every API process that mounts it sees
the same files.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: What an uploaded file may be for: only batch input is served (the other purposes are OpenAI's
#: assistants, fine-tuning and vision, which modelyard has no use for).
UPLOAD_PURPOSES = ("batch",)
#: The purpose of a batch's output and error files.
OUTPUT_PURPOSE = "batch_output"


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


@dataclass
class StoredFile:
    """A file's object (what the API returns) and who may see it."""

    object: dict[str, Any]
    owner: str | None
    path: Path
    #: When it was made, in nanoseconds: files of one second still list newest first.
    created_ns: int = 0

    @property
    def id(self) -> str:
        return self.object["id"]


class FileStore:
    """The files folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _content(self, file_id: str) -> Path:
        return self.root / file_id

    def _meta(self, file_id: str) -> Path:
        return self.root / f"{file_id}.json"

    def staging(self) -> Path:
        """A new path in the folder for bytes being written (not listed until :meth:`add`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".staging-{secrets.token_hex(8)}"

    def save(self, stream: IO[bytes], filename: str, purpose: str, owner: str | None) -> StoredFile:
        """Write ``stream`` as a new file."""
        staged = self.staging()
        with staged.open("wb") as out:
            shutil.copyfileobj(stream, out, 1024 * 1024)
        return self.add(staged, new_file_id(), filename, purpose, owner)

    def add(self, staged: Path, file_id: str, filename: str, purpose: str, owner: str | None) -> StoredFile:
        """Make the bytes at ``staged`` (in the folder) the file ``file_id``."""
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": staged.stat().st_size,
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }
        os.replace(staged, self._content(file_id))
        meta = self.root / f".staging-{file_id}.json"
        created_ns = time.time_ns()
        meta.write_text(json.dumps({"object": obj, "owner": owner, "created_ns": created_ns}))
        os.replace(meta, self._meta(file_id))
        return StoredFile(obj, owner, self._content(file_id), created_ns)

    def get(self, file_id: str, owner: str | None) -> StoredFile | None:
        """The file, if it exists and ``owner`` may see it (None sees every file)."""
        if not _valid_id(file_id):
            return None
        try:
            record = json.loads(self._meta(file_id).read_text())
        except (OSError, ValueError):
            return None
        if owner is not None and record.get("owner") != owner:
            return None
        return StoredFile(record["object"], record.get("owner"), self._content(file_id), record["created_ns"])

    def exists(self, file_id: str) -> bool:
        return _valid_id(file_id) and self._meta(file_id).exists()

    def list(self, owner: str | None, purpose: str | None = None) -> Iterator[StoredFile]:
        """Every file ``owner`` may see (of ``purpose``), newest first."""
        if not self.root.is_dir():
            return iter(())
        found = []
        for entry in os.scandir(self.root):
            name = entry.name
            if name.startswith(".") or not name.endswith(".json"):
                continue
            stored = self.get(name[: -len(".json")], owner)
            if stored is not None and (purpose is None or stored.object["purpose"] == purpose):
                found.append(stored)
        found.sort(key=lambda f: f.created_ns, reverse=True)
        return iter(found)

    def delete(self, file_id: str) -> None:
        """Remove the file (its object first: a half-deleted file is not listed)."""
        self._meta(file_id).unlink(missing_ok=True)
        self._content(file_id).unlink(missing_ok=True)


def _valid_id(file_id: str) -> bool:
    """An id this store could have made: no path tricks (``..``, ``/``) reach the filesystem."""
    return file_id.startswith("file-") and file_id[5:].isalnum() and len(file_id) <= 64
