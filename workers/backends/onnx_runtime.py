"""Running an exported graph: ONNX Runtime or OpenVINO, behind one call, and the cached export it runs.

Both runtimes read the same ``model.onnx`` (OpenVINO converts it in memory as it compiles), so the
backends share one export and one cache (``workers.backends.onnx_export``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.catalog import ModelBackend, ModelSpec
from workers.backends.onnx_export import MODEL_FILE, cached_export

logger = logging.getLogger(__name__)

#: Feeds (input name to int64 array) to the graph's one output.
Graph = Callable[[dict[str, np.ndarray]], np.ndarray]


def check_device(spec: ModelSpec) -> None:
    """The exported backends run on the CPU only."""
    if spec.device not in ("auto", "cpu"):
        raise ValueError(
            f"model {spec.name!r}: backend {spec.backend} runs on the CPU, not {spec.device!r};"
            " use backend: torch for an accelerator"
        )


def open_graph(path: Path, backend: ModelBackend, threads: int | None) -> Graph:
    """Load ``path``'s ``model.onnx`` on ``backend`` with ``threads`` intra-op threads (None: its own)."""
    model = str(path / MODEL_FILE)
    if backend is ModelBackend.OPENVINO:
        import openvino

        # f32: on CPUs with bf16 units OpenVINO would otherwise compute in bf16 (cosine ~0.99996).
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = openvino.Core().compile_model(model, "CPU", config)
        request = compiled.create_infer_request()  # one pass at a time: the engine thread's
        output = compiled.output(0)

        def run_openvino(feeds: dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(request.infer(feeds)[output])

        return run_openvino

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    # ONNX Runtime's threads spin between runs by default: beside a stream of small batches that
    # burns every core it has and starves the other workers of the host (bench/RESULTS.md, issue 14).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def run_onnx(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, feeds)[0]

    return run_onnx


def load_export(
    spec: ModelSpec, builder: Callable[[str, Path], dict[str, Any]], root: Path | None = None
) -> tuple[Path, dict[str, Any], Graph]:
    """``spec``'s cached export (built if missing or stale), its manifest and its loaded graph."""
    check_device(spec)
    kind = spec.kind.value
    path, manifest = cached_export(spec.source, kind, lambda dest: builder(spec.source, dest), root)
    graph = open_graph(path, spec.backend, spec.threads)
    return path, manifest, graph


def pad(
    rows: list[list[int]], pad_id: int, names: list[str], types: list[list[int]] | None = None
) -> dict[str, np.ndarray]:
    """Right-padded int64 feeds of token-id rows: ids, mask, and token types if the graph takes them
    (``types``, a pair's segments; zeros without)."""
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    segments = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        if types is not None:
            segments[i, : len(row)] = types[i]
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = segments
    return feeds
