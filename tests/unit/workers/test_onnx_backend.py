"""The exported backends (onnx, openvino) against the torch backend on the real checkpoints, and the
export cache: built once, reused, rebuilt when the checkpoint or the exporter changes, safe to share."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from shared.catalog import ModelBackend, ModelSpec
from shared.errors import InvalidRequest
from workers.backends import onnx_export
from workers.backends.embedding import Embedder
from workers.backends.onnx_embedding import ExportedEmbedder
from workers.backends.onnx_export import MANIFEST, MODEL_FILE, cached_export
from workers.backends.onnx_rerank import ExportedReranker
from workers.backends.onnx_runtime import cpu_plan
from workers.backends.rerank import Reranker
from workers.loaders import pooling_backend

TEXTS = [
    "a cat sits on the mat",
    "a kitten is on the rug",
    "stock markets fell today",
    "A much longer sentence about the weather, which was warm and sunny all week long. " * 12,
    "",
    "  leading and trailing spaces  ",
    "Ünïcödé, emoji \U0001f600 and CJK 漢字",
]
QUERY = "what is redis"
BACKENDS = [
    pytest.param(ModelBackend.ONNX, id="onnx"),
    pytest.param(
        ModelBackend.OPENVINO,
        id="openvino",
        marks=pytest.mark.skipif(
            __import__("importlib").util.find_spec("openvino") is None, reason="openvino is not installed"
        ),
    ),
]


def spec(kind: str, source: Path, backend: ModelBackend = ModelBackend.TORCH, **extra) -> ModelSpec:
    return ModelSpec(
        name=f"test-{kind}", kind=kind, source=str(source), device="cpu", backend=backend, **extra
    )


@pytest.fixture(scope="module")
def export_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def torch_embedder(default_models_dir: Path) -> Embedder:
    return Embedder.load(spec("embedding", default_models_dir / "all-MiniLM-L6-v2"))


@pytest.fixture(scope="module")
def torch_reranker(default_models_dir: Path) -> Reranker:
    return Reranker.load(spec("rerank", default_models_dir / "tiny-reranker"))


# -- the same vectors and scores as torch ---------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_vectors_match_the_torch_backend(backend, default_models_dir, export_root, torch_embedder) -> None:
    exported = ExportedEmbedder.load(
        spec("embedding", default_models_dir / "all-MiniLM-L6-v2", backend), export_root
    )
    assert exported.dimension == torch_embedder.dimension == 384
    assert exported.max_tokens == torch_embedder.max_tokens
    assert exported.vocab_size == torch_embedder.vocab_size
    assert exported.count_tokens(TEXTS) == torch_embedder.count_tokens(TEXTS)
    # One batch (padded to the longest, truncated to 256 tokens), and each text alone.
    ours, theirs = exported.embed(TEXTS), torch_embedder.embed(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * theirs).sum(axis=1).min() >= 0.9999
    alone = np.stack([exported.embed([text])[0] for text in TEXTS])
    assert (alone * theirs).sum(axis=1).min() >= 0.9999
    # Token ids as the client sent them (no special tokens), cut to max_tokens.
    ids = [[2023, 2003, 1037, 3899], [2000] * 400]
    assert exported.count_tokens(ids) == torch_embedder.count_tokens(ids) == [4, 256]
    assert (exported.embed(ids) * torch_embedder.embed(ids)).sum(axis=1).min() >= 0.9999
    assert exported.embed([]).shape == (0, 384)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rerank_logits_match_the_torch_backend(
    backend, default_models_dir, export_root, torch_reranker
) -> None:
    exported = ExportedReranker.load(
        spec("rerank", default_models_dir / "tiny-reranker", backend), export_root
    )
    pairs = [(QUERY, text) for text in TEXTS] + [("another query, longer than the first one", "a document")]
    assert exported.count_pair_tokens(pairs) == torch_reranker.count_pair_tokens(pairs)
    np.testing.assert_allclose(exported.logits_pairs(pairs), torch_reranker.logits_pairs(pairs), atol=1e-4)
    np.testing.assert_allclose(exported.score(QUERY, TEXTS), torch_reranker.score(QUERY, TEXTS), atol=1e-5)
    assert exported.logits_pairs([]) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_streams_embed_at_once_and_agree(backend, default_models_dir, export_root) -> None:
    exported = ExportedEmbedder.load(
        spec("embedding", default_models_dir / "all-MiniLM-L6-v2", backend, streams=2, threads=1), export_root
    )
    alone = exported.embed(TEXTS)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(exported.embed(TEXTS))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4
    for result in results:
        np.testing.assert_allclose(result, alone, atol=1e-6)


def test_cpu_plan_gives_each_core_a_stream_up_to_four() -> None:
    base = spec("embedding", Path("unused"), ModelBackend.ONNX)
    assert (cpu_plan(base, cores=2).streams, cpu_plan(base, cores=2).threads) == (2, 1)
    assert (cpu_plan(base, cores=1).streams, cpu_plan(base, cores=1).threads) == (1, 1)
    assert (cpu_plan(base, cores=16).streams, cpu_plan(base, cores=16).threads) == (4, 4)
    chosen = base.model_copy(update={"streams": 1, "threads": 3})
    assert (cpu_plan(chosen, cores=16).streams, cpu_plan(chosen, cores=16).threads) == (1, 3)
    assert cpu_plan(base.model_copy(update={"streams": 3}), cores=12).threads == 4


def test_a_smaller_context_length_and_refused_inputs(default_models_dir, export_root, torch_embedder) -> None:
    small = ExportedEmbedder.load(
        spec("embedding", default_models_dir / "all-MiniLM-L6-v2", ModelBackend.ONNX, context_length=16),
        export_root,
    )
    assert small.max_tokens == 16 and small.count_tokens(["word " * 100]) == [16]
    with pytest.raises(InvalidRequest) as refused:
        small.embed(["fine", "bad \ud800 surrogate"])
    assert refused.value.param == "input.1"
    reranker = ExportedReranker.load(
        spec("rerank", default_models_dir / "tiny-reranker", ModelBackend.ONNX), export_root
    )
    with pytest.raises(InvalidRequest) as refused:
        reranker.count_pair_tokens([(QUERY, "fine"), (QUERY, "bad \udfff")])
    assert refused.value.param == "documents.1"
    # Every load of this module used one export per model (the first one's), whatever its context.
    for kind in ("embedding", "rerank"):
        (folder,) = export_root.glob(f"*-{kind}")
        assert len([p for p in folder.iterdir() if not p.name.startswith(".")]) == 1


def test_auto_is_onnx_on_the_cpu_and_explicit_backends_stay(default_models_dir) -> None:
    source = default_models_dir / "all-MiniLM-L6-v2"
    assert pooling_backend(spec("embedding", source, ModelBackend.AUTO)) is ModelBackend.ONNX
    for backend in (ModelBackend.TORCH, ModelBackend.ONNX, ModelBackend.OPENVINO):
        assert pooling_backend(spec("embedding", source, backend)) is backend
    with pytest.raises(ValueError, match="CPU"):
        ExportedEmbedder.load(
            ModelSpec(name="gpu", kind="embedding", source=str(source), device="cuda", backend="onnx")
        )


# -- the export cache --------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A stand-in checkpoint folder (the cache only fingerprints its files)."""
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


class CountingBuilder:
    """Writes a fake model.onnx (its call number) and counts calls; optionally slow, to race."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls = 0
        self.seconds = seconds
        self.lock = threading.Lock()

    def __call__(self, dest: Path) -> dict:
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.seconds)
        (dest / MODEL_FILE).write_text(f"build {n}")
        return {"build": n}


def test_an_export_is_built_once_then_reused(checkpoint: Path, tmp_path: Path) -> None:
    build = CountingBuilder()
    path, manifest = cached_export(str(checkpoint), "embedding", build, tmp_path / "root")
    again, manifest_again = cached_export(str(checkpoint), "embedding", build, tmp_path / "root")
    assert build.calls == 1 and again == path and manifest_again == manifest
    assert (
        manifest["source"] == str(checkpoint) and manifest["key"]["exporter"] == onnx_export.EXPORTER_VERSION
    )
    assert (path / MODEL_FILE).read_text() == "build 1"
    # Another kind of the same checkpoint is another export.
    other, _ = cached_export(str(checkpoint), "rerank", build, tmp_path / "root")
    assert other != path and build.calls == 2


def test_a_changed_checkpoint_is_rebuilt_and_the_stale_export_removed(
    checkpoint: Path, tmp_path: Path
) -> None:
    build = CountingBuilder()
    old, _ = cached_export(str(checkpoint), "embedding", build, tmp_path / "root")
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(b"other weights")  # retrained in place
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    new, manifest = cached_export(str(checkpoint), "embedding", build, tmp_path / "root")
    assert build.calls == 2 and new != old and manifest["build"] == 2
    assert not old.exists() and (new / MODEL_FILE).read_text() == "build 2"
    # A new file in the checkpoint (a tokenizer added) is a change too; a README is not.
    (checkpoint / "README.md").write_text("card")
    assert cached_export(str(checkpoint), "embedding", build, tmp_path / "root")[0] == new
    (checkpoint / "tokenizer.json").write_text("{}")
    assert cached_export(str(checkpoint), "embedding", build, tmp_path / "root")[0] != new
    assert build.calls == 3


def test_a_new_exporter_version_rebuilds(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    build = CountingBuilder()
    old, _ = cached_export(str(checkpoint), "embedding", build, tmp_path / "root")
    monkeypatch.setattr(onnx_export, "EXPORTER_VERSION", onnx_export.EXPORTER_VERSION + 1)
    new, manifest = cached_export(str(checkpoint), "embedding", build, tmp_path / "root")
    assert new != old and build.calls == 2 and manifest["key"]["exporter"] == onnx_export.EXPORTER_VERSION
    real = onnx_export.export_key(checkpoint, "embedding")
    assert {"torch", "onnx", "transformers", "sentence-transformers"} <= set(real)


def test_a_damaged_export_is_rebuilt_not_served(checkpoint: Path, tmp_path: Path) -> None:
    build = CountingBuilder()
    path, _ = cached_export(str(checkpoint), "embedding", build, tmp_path / "root")
    (path / MODEL_FILE).write_text("trunc")  # a partial copy: its size no longer matches
    assert cached_export(str(checkpoint), "embedding", build, tmp_path / "root")[1]["build"] == 2
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["key"]["exporter"] = -1  # a manifest that is not this key's
    (path / MANIFEST).write_text(json.dumps(manifest))
    assert cached_export(str(checkpoint), "embedding", build, tmp_path / "root")[1]["build"] == 3
    shutil.rmtree(path)
    assert cached_export(str(checkpoint), "embedding", build, tmp_path / "root")[1]["build"] == 4


def test_concurrent_exports_build_once_and_agree(checkpoint: Path, tmp_path: Path) -> None:
    build = CountingBuilder(seconds=0.5)
    results: list[tuple[Path, dict]] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                cached_export(str(checkpoint), "embedding", build, tmp_path / "root")
            )
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 4 and build.calls == 1
    assert len({path for path, _ in results}) == 1 and all(m["build"] == 1 for _, m in results)
    parent = results[0][0].parent
    assert [p.name for p in parent.iterdir() if p.name.startswith(".build-")] == []


def test_a_failed_build_leaves_nothing_behind(checkpoint: Path, tmp_path: Path) -> None:
    def broken(dest: Path) -> dict:
        (dest / MODEL_FILE).write_text("half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError):
        cached_export(str(checkpoint), "embedding", broken, tmp_path / "root")
    (folder,) = (tmp_path / "root").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]
    assert cached_export(str(checkpoint), "embedding", CountingBuilder(), tmp_path / "root")[1]["build"] == 1
