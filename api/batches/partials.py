"""A batch's answers so far: two append-only JSONL files in ``<files_dir>/.batches/``, the output
(2xx answers) and the errors (the others), one line per request line answered.

They are the record of what is done: a run that takes a batch over reads the custom_ids in them
(cutting off a last line torn by a crash) and sends only the others. At the batch's end they become
its output and error files, under ids derived from the batch's, so publishing twice makes no new
files.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from api.batches.files import OUTPUT_PURPOSE, FileStore

KINDS = ("output", "error")
#: The ``request_counts`` field each file counts.
COUNTED = {"output": "completed", "error": "failed"}


def output_file_ids(batch_id: str) -> dict[str, str]:
    """The ids of a batch's output and error files."""
    token = batch_id.removeprefix("batch_")
    return {"output": f"file-{token}out", "error": f"file-{token}err"}


class Partials:
    def __init__(self, files: FileStore, batch_id: str) -> None:
        self.files = files
        self.batch_id = batch_id
        root = files.root / ".batches"
        root.mkdir(parents=True, exist_ok=True)
        self.paths = {kind: root / f"{batch_id}.{kind}" for kind in KINDS}

    def recover(self) -> set[str]:
        """The custom_ids answered so far (a torn last line is cut off first)."""
        done: set[str] = set()
        for path in self.paths.values():
            if not path.exists():
                continue
            data = path.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]
            if len(whole) != len(data):
                with path.open("r+b") as handle:
                    handle.truncate(len(whole))
            done.update(json.loads(raw)["custom_id"] for raw in whole.splitlines() if raw.strip())
        return done

    def counts(self) -> dict[str, int]:
        """``completed`` and ``failed`` as the files count them."""
        counts = dict.fromkeys(COUNTED.values(), 0)
        for kind, path in self.paths.items():
            if path.exists():
                with path.open("rb") as handle:
                    counts[COUNTED[kind]] = sum(1 for raw in handle if raw.strip())
        return counts

    def open(self) -> dict[str, BinaryIO]:
        """Both files, for appending (the caller closes them)."""
        return {kind: path.open("ab") for kind, path in self.paths.items()}

    @staticmethod
    def append(handle: BinaryIO, line: dict[str, Any]) -> None:
        """One answer, flushed: what a crash leaves is whole lines and at most one torn one."""
        handle.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        handle.flush()

    def publish(self, owner: str | None) -> dict[str, str | None]:
        """Make each file with a line the batch's output or error file; their ids (None: no line)."""
        ids: dict[str, str | None] = {}
        for kind, file_id in output_file_ids(self.batch_id).items():
            partial = self.paths[kind]
            if self.files.exists(file_id):  # published by a finish that did not get to record it
                ids[kind] = file_id
            elif partial.exists() and partial.stat().st_size:
                self.files.add(partial, file_id, f"{self.batch_id}_{kind}.jsonl", OUTPUT_PURPOSE, owner)
                ids[kind] = file_id
            else:
                ids[kind] = None
            partial.unlink(missing_ok=True)
        return ids
