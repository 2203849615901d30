"""ONNX exports of embedding and cross-encoder checkpoints, built once and cached.

An export is built from the checkpoint the torch backend loads (``torch.onnx.export``, no optimum) and
kept under ``<root>/<folder>-<hash of the source path>-<kind>/<key>/``. The key is a digest of
everything the exported graph depends on: each checkpoint file's size and modification time, the
exporter's own version (:data:`EXPORTER_VERSION`), the ONNX opset and the torch, transformers and
sentence-transformers versions. A changed checkpoint or exporter gives another key, so a stale export
is rebuilt, never served; the folder's ``manifest.json`` repeats the key and is checked before use.

Concurrent workers may export the same model: the build runs in a temporary folder beside the final one
under an advisory lock, and is renamed into place only when complete (a rename is atomic), so a reader
sees no folder or a whole one. Older keys of the same source and kind are removed after a build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Bump when what is exported changes (its inputs, outputs, pooling or options): every cached export
#: of an older version is then rebuilt.
EXPORTER_VERSION = 1
OPSET = 17
MODEL_FILE = "model.onnx"
MANIFEST = "manifest.json"
#: The repository's models/ folder (git-ignored): the default cache for every model's exports.
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "models" / ".exports"
#: Temporary build folders older than this are leftovers of killed builds, swept before a build.
STALE_BUILD_SECONDS = 3600
#: The packages whose versions decide what an export holds: a new version of any rebuilds it.
_EXPORTING_PACKAGES = ("torch", "onnx", "transformers", "sentence-transformers")
#: Checkpoint files that do not change the model (a model card, git metadata).
_IGNORED = {"README.md", ".gitattributes"}


def local_folder(source: str) -> Path:
    """The checkpoint folder of ``source``: a local path as it is, a hub id's cached snapshot."""
    path = Path(source)
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source))


def fingerprint(folder: Path) -> dict[str, list[int]]:
    """Each checkpoint file's ``[size, mtime_ns]`` by relative path (symlinks followed, hidden skipped).

    Size and time rather than a content hash: hashing ~100 MB of weights at every start would cost
    more than loading them, and any write to a file (a re-download, a rebuild) changes its time.
    """
    files: dict[str, list[int]] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or relative.name in _IGNORED:
            continue
        if path.is_file():
            stat = path.stat()
            files[relative.as_posix()] = [stat.st_size, stat.st_mtime_ns]
    if not files:
        raise FileNotFoundError(f"{folder}: no checkpoint files")
    return files


def export_key(folder: Path, kind: str) -> dict[str, Any]:
    """What the export of ``folder`` as ``kind`` depends on; its digest names the cached export."""
    return {
        "exporter": EXPORTER_VERSION,
        "opset": OPSET,
        "kind": kind,
        # Read from the installed metadata: importing sentence-transformers costs seconds per start.
        **{package: metadata.version(package) for package in _EXPORTING_PACKAGES},
        "checkpoint": fingerprint(folder),
    }


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def export_folder(root: Path, folder: Path, kind: str, key: dict[str, Any]) -> Path:
    """Where the export of ``folder`` as ``kind`` under ``key`` lives."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", folder.name) or "model"
    source = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    return root / f"{name}-{source}-{kind}" / _digest(key)


def read_manifest(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a complete export of ``key`` at ``path``, or None (missing, partial, other key)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        size = (path / MODEL_FILE).stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != key or manifest.get("model_bytes") != size:
        return None
    return manifest


@contextlib.contextmanager
def _locked(parent: Path) -> Iterator[None]:
    """One build per model folder at a time on this host (other hosts rely on the atomic rename)."""
    with open(parent / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sweep(parent: Path, keep: Path) -> None:
    """Remove other keys' exports, and build folders left by killed builds."""
    cutoff = time.time() - STALE_BUILD_SECONDS
    for entry in parent.iterdir():
        if entry == keep or not entry.is_dir():
            continue
        try:
            if entry.name.startswith(".build-") and entry.lstat().st_mtime >= cutoff:
                continue  # another process may be building there right now
        except FileNotFoundError:
            continue
        logger.info("removing the stale export %s", entry)
        shutil.rmtree(entry, ignore_errors=True)


#: Writes the export into the folder it is given: ``model.onnx`` and whatever else the runtime needs
#: (the tokenizer); returns the manifest's fields beyond the key.
Builder = Callable[[Path], dict[str, Any]]


def cached_export(source: str, kind: str, build: Builder, root: Path | None = None) -> tuple[Path, dict]:
    """The folder and manifest of ``source``'s export as ``kind``, building it first if it is missing
    or stale. ``build`` is called at most once, in a temporary folder renamed into place when done."""
    folder = local_folder(source)
    key = export_key(folder, kind)
    path = export_folder(root or DEFAULT_ROOT, folder, kind, key)
    manifest = read_manifest(path, key)
    if manifest is not None:
        return path, manifest
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        manifest = read_manifest(path, key)  # built by another process while this one waited
        if manifest is not None:
            return path, manifest
        _sweep(path.parent, keep=path)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=path.parent))
        try:
            extra = build(tmp)
            manifest = {
                **extra,
                "key": key,
                "source": str(folder),
                "model_bytes": (tmp / MODEL_FILE).stat().st_size,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide it from workers running as other users
            if path.exists():  # an incomplete or corrupted folder under this key: never served
                shutil.rmtree(path)
            try:
                os.rename(tmp, path)
            except OSError:
                other = read_manifest(path, key)  # another host's build won the race: use it
                if other is None:
                    raise
                return path, other
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s (%s) to %s in %.1fs", source, kind, path, time.monotonic() - started)
    return path, manifest
