"""Embeddings and rerank served by a real worker on ``backend: onnx`` and ``backend: openvino`` give
the torch backend's vectors and scores through the API (docs/embeddings.md).

Its own models file (each checkpoint under one name per backend), worker and API, on this module's
Redis database, so the session's fleet and queues are untouched.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from harness import ApiServer, WorkerProcess, start_api, stop_process, wait_until

TEXTS = [
    "a cat sits on the mat",
    "stock markets fell today",
    "A much longer sentence about the weather, which was warm and sunny all week long. " * 10,
    "x",
]
DOCUMENTS = ["Redis is an in-memory data store", "a recipe for bread", "Redis keeps keys in memory"]
BACKENDS = ["torch", "onnx"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


@pytest.fixture(scope="module")
def backends_api(base_env, redis_db, models_dir: Path, tmp_path_factory) -> Iterator[ApiServer]:
    folder = tmp_path_factory.mktemp("backends")
    models = folder / "models.yaml"
    lines = ["models:"]
    for backend in BACKENDS:
        lines.append(
            f"  - {{name: minilm-{backend}, kind: embedding, backend: {backend},"
            f" source: '{models_dir / 'all-MiniLM-L6-v2'}', max_batch_size: 2}}"
        )
        lines.append(
            f"  - {{name: reranker-{backend}, kind: rerank, backend: {backend},"
            f" source: '{models_dir / 'tiny-reranker'}', max_batch_size: 2}}"
        )
    models.write_text("\n".join(lines) + "\n")
    env = {**base_env, "MODELYARD_REDIS_URL": redis_db.url, "MODELYARD_MODELS_FILE": str(models)}
    names = [f"{kind}-{backend}" for backend in BACKENDS for kind in ("minilm", "reranker")]
    worker = WorkerProcess(env, names, folder / "worker.log")
    api = log = None
    try:
        worker.wait_ready(redis_db, timeout=300)  # the first start exports each checkpoint
        api, log = start_api(env, folder / "api.log")
        yield api
    finally:
        if api is not None:
            stop_process(api.proc)
            log.close()
        worker.stop()


def embed(api: ApiServer, model: str, inputs: list) -> np.ndarray:
    response = requests.post(api.url + "/v1/embeddings", json={"model": model, "input": inputs}, timeout=60)
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]])


def rerank_scores(api: ApiServer, model: str, raw: bool = False) -> list[float]:
    body = {"model": model, "query": "what is redis", "documents": DOCUMENTS, "raw_scores": raw}
    response = requests.post(api.url + "/v1/rerank", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return [r["relevance_score"] for r in sorted(response.json()["results"], key=lambda r: r["index"])]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_exported_backends_serve_the_torch_vectors_and_scores(backends_api, backend) -> None:
    reference = embed(backends_api, "minilm-torch", TEXTS)
    vectors = embed(backends_api, f"minilm-{backend}", TEXTS)
    assert vectors.shape == reference.shape == (len(TEXTS), 384)
    assert (vectors * reference).sum(axis=1).min() >= 0.9999
    ids = [[101, 1037, 4937, 102], [2000] * 300]  # token ids, the second cut to 256
    assert (embed(backends_api, f"minilm-{backend}", ids) * embed(backends_api, "minilm-torch", ids)).sum(
        axis=1
    ).min() >= 0.9999
    for raw in (False, True):
        np.testing.assert_allclose(
            rerank_scores(backends_api, f"reranker-{backend}", raw),
            rerank_scores(backends_api, "reranker-torch", raw),
            atol=1e-4,
        )


def test_an_exported_backend_refuses_what_torch_refuses(backends_api) -> None:
    for backend in BACKENDS:
        response = requests.post(
            backends_api.url + "/v1/embeddings",
            json={"model": f"minilm-{backend}", "input": [[0, 30522]]},
            timeout=60,
        )
        assert response.status_code == 400, (backend, response.text)
        assert response.json()["error"]["param"] == "input.0"


def test_the_worker_uses_the_cached_export(backends_api, redis_db, base_env, models_dir, tmp_path) -> None:
    """A second worker of an exported model starts from the cache: no export in its log."""
    models = tmp_path / "models.yaml"
    models.write_text(
        f"models:\n  - {{name: minilm-onnx, kind: embedding, backend: onnx,"
        f" source: '{models_dir / 'all-MiniLM-L6-v2'}', max_batch_size: 2}}\n"
    )
    env = {**base_env, "MODELYARD_REDIS_URL": redis_db.url, "MODELYARD_MODELS_FILE": str(models)}
    worker = WorkerProcess(env, ["minilm-onnx"], tmp_path / "second.log")
    try:
        worker.wait_ready(redis_db, timeout=120)
        wait_until(
            lambda: "loaded embedding model minilm-onnx on onnx" in worker.log_path.read_text(), 30, "log"
        )
        assert "exported" not in worker.log_path.read_text()
    finally:
        worker.stop()
