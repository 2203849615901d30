"""Running an exported graph: ONNX Runtime or OpenVINO, behind one call, and the cached export it runs.

Both runtimes read the same ``model.onnx`` (OpenVINO converts it in memory as it compiles), so the
backends share one export and one cache (``workers.backends.onnx_export``).
"""

from __future__ import annotations

import logging
import os
import threading
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


#: Streams an exported model gets by default: one per core up to this many (each pass then runs on
#: the cores divided among them); past it, more threads per pass lower the latency of small batches.
MAX_DEFAULT_STREAMS = 4


def cpu_plan(spec: ModelSpec, cores: int | None = None) -> ModelSpec:
    """``spec`` with its ``streams`` and ``threads`` (intra-op, per pass) resolved for this host.

    Concurrent one-thread passes beat one pass over every core on a small CPU: on 2 cores two
    one-thread ONNX Runtime passes of MiniLM embedded ~1.4x the sentences of one two-thread pass (no
    barrier between the threads of an operator, and nothing stalls when the API takes a core).
    """
    cores = cores or len(os.sched_getaffinity(0))
    streams = spec.streams or min(cores, MAX_DEFAULT_STREAMS)
    threads = spec.threads or max(1, cores // streams)
    return spec.model_copy(update={"streams": streams, "threads": threads})


def open_graph(path: Path, backend: ModelBackend, threads: int, streams: int = 1) -> Graph:
    """Load ``path``'s ``model.onnx`` on ``backend`` for ``streams`` concurrent callers, each pass on
    ``threads`` intra-op threads. The graph may be called from ``streams`` threads at once."""
    model = str(path / MODEL_FILE)
    if backend is ModelBackend.OPENVINO:
        import openvino

        # f32: on CPUs with bf16 units OpenVINO would otherwise compute in bf16 (cosine ~0.99996).
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": threads * streams,
        }
        if streams > 1:  # its CPU streams: the threads split among concurrent infer requests
            config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams})
        else:
            config["PERFORMANCE_HINT"] = "LATENCY"
        compiled = openvino.Core().compile_model(model, "CPU", config)
        output = compiled.output(0)
        # An infer request runs one pass at a time: each calling thread gets its own.
        local = threading.local()

        def run_openvino(feeds: dict[str, np.ndarray]) -> np.ndarray:
            request = getattr(local, "request", None)
            if request is None:
                request = local.request = compiled.create_infer_request()
            return np.asarray(request.infer(feeds)[output])

        return run_openvino

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    # ONNX Runtime's threads spin between runs by default: beside a stream of small batches that
    # burns every core it has and starves the other workers of the host (bench/RESULTS.md, issue 14).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    # One session serves every stream: its run() may be called from several threads at once.
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def run_onnx(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, feeds)[0]

    return run_onnx


def load_export(
    spec: ModelSpec, builder: Callable[[str, Path], dict[str, Any]], root: Path | None = None
) -> tuple[Path, dict[str, Any], Graph]:
    """``spec``'s cached export (built if missing or stale), its manifest and its loaded graph, for
    ``spec``'s streams and threads (resolved by :func:`cpu_plan` when unset)."""
    check_device(spec)
    kind = spec.kind.value
    path, manifest = cached_export(spec.source, kind, lambda dest: builder(spec.source, dest), root)
    plan = cpu_plan(spec)
    assert plan.threads is not None and plan.streams is not None
    graph = open_graph(path, spec.backend, plan.threads, plan.streams)
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
