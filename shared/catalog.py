"""The model catalog (the models file): which models are served, under which names, with which limits."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from shared.errors import InvalidRequest
from shared.tools import ToolParserName


class ModelKind(StrEnum):
    """What a model does; decides its endpoints and its worker engine."""

    CHAT = "chat"  # chat completions and completions
    EMBEDDING = "embedding"
    RERANK = "rerank"


class ModelBackend(StrEnum):
    """What runs an embedding or rerank model's forward pass (chat models always run on torch)."""

    AUTO = "auto"  # onnx on the CPU (measured fastest there, bench/RESULTS.md), torch on an accelerator
    TORCH = "torch"  # sentence-transformers on torch
    ONNX = "onnx"  # ONNX Runtime, on an export of the same checkpoint (docs/embeddings.md)
    OPENVINO = "openvino"  # OpenVINO, on the same export


class ModelSpec(BaseModel):
    """One served model, as written in the models file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="The OpenAI `model` id clients send.")
    aliases: tuple[str, ...] = ()
    kind: ModelKind
    source: str = Field(min_length=1, description="A Hugging Face id or a local path.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    dtype: str = Field("auto", description="auto, float32, float16 or bfloat16.")
    context_length: PositiveInt | None = Field(
        None, description="Prompt plus completion tokens (chat) or tokens per input; default from the model."
    )
    max_batch_size: PositiveInt = Field(
        8, description="Jobs one worker process runs at once; also the number of rq slots it registers."
    )
    max_batch_tokens: PositiveInt = Field(
        16384, description="Tokens in one embedding or rerank forward pass."
    )
    max_cache_tokens: PositiveInt | None = Field(
        None,
        description=(
            "Chat models: KV-cache budget of one worker process, in tokens. A sequence reserves its"
            " prompt plus its completion limit and waits until that fits beside the running ones"
            " (TGI's max_batch_total_tokens); default: no budget beyond max_batch_size."
        ),
    )
    max_sequences_per_request: PositiveInt = Field(
        256,
        description=(
            "Chat models: most sequences (completions: prompts x n; chat: n) one request may ask for;"
            " past it the API answers 400 before anything is queued, and the worker refuses it too."
        ),
    )
    max_queue: PositiveInt = Field(
        256, description="Jobs waiting in the model's queue before new requests get 429."
    )
    coalesce_inputs: PositiveInt = Field(
        64,
        description=(
            "Embedding models: while this model's workers are busy, an API process merges concurrent"
            " requests into one job of up to this many inputs, so rq's per-job cost is paid once for"
            " all of them; 1 sends every request as its own job."
        ),
    )
    coalesce_in_flight: PositiveInt = Field(
        1,
        description=(
            "Embedding models: coalesced jobs an API process keeps in flight per live worker before"
            " new requests wait to be merged. One makes the biggest jobs (rq's cost per job paid"
            " once for the most inputs) and the worker's streams share each job's passes: on 2 CPU"
            " cores ~1.2x the requests/s of two (bench/RESULTS.md). Two keep a job queued behind the"
            " running one, for a worker that must never wait on the API between jobs."
        ),
    )
    tool_parser: ToolParserName | None = Field(
        None,
        description=(
            "Chat models: the format the model writes tool calls in (hermes, llama3_json, mistral);"
            " default: detected from its chat template."
        ),
    )
    backend: ModelBackend = Field(
        ModelBackend.AUTO,
        description=(
            "Embedding and rerank models: torch, onnx or openvino (the last two on the CPU, from an"
            " export of the checkpoint cached under models/.exports); auto: onnx on the CPU, torch on"
            " an accelerator."
        ),
    )
    threads: PositiveInt | None = Field(
        None,
        description=(
            "torch CPU threads of the worker process serving this model (the most any of its models"
            " asks for); default: torch's own, one per core. Tiny models decode faster on one. On"
            " onnx and openvino: the intra-op threads of each forward pass; default: the cores"
            " divided among the streams."
        ),
    )
    streams: PositiveInt | None = Field(
        None,
        description=(
            "Embedding and rerank models: forward passes one worker process runs at once, each on"
            " an engine thread of its own; default on onnx and openvino one per CPU core, up to 4"
            " (two one-thread passes on 2 cores embed ~1.4x the sentences of one two-thread pass,"
            " bench/RESULTS.md), on torch 1."
        ),
    )

    @property
    def names(self) -> tuple[str, ...]:
        """The name and every alias."""
        return (self.name, *self.aliases)

    def check_sequences(self, prompts: int, n: int) -> None:
        """Refuse a generation request of ``prompts`` x ``n`` sequences past this model's cap."""
        cap = self.max_sequences_per_request
        if prompts * n <= cap:
            return
        if prompts == 1:
            asked, fix = f"n={n}", "Reduce n."
        else:
            asked, fix = (
                f"{prompts} prompts x n={n} = {prompts * n} sequences",
                "Send fewer prompts or a lower n.",
            )
        raise InvalidRequest(
            f"This request asks for {asked}; model {self.name!r} generates at most {cap} sequences"
            f" per request. {fix}",
            # Naming n unless the prompts alone are too many (then no n would do).
            param="prompt" if prompts > cap else "n",
        )


class ModelsFileError(ValueError):
    """The models file is missing or invalid."""


class ModelCatalog:
    """Every configured model, looked up by name or alias."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        self.specs = specs
        self._by_name: dict[str, ModelSpec] = {}
        for spec in specs:
            for name in spec.names:
                if name in self._by_name:
                    raise ModelsFileError(f"model name {name!r} is used twice")
                self._by_name[name] = spec

    def resolve(self, name: str) -> ModelSpec | None:
        """The model called ``name`` (or aliased so), if any."""
        return self._by_name.get(name)

    def __iter__(self):
        return iter(self.specs)

    @classmethod
    def load(cls, path: str | Path) -> ModelCatalog:
        """Read a YAML models file; relative local ``source`` paths are taken from the file's folder."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ModelsFileError(f"cannot read models file {path}: {exc}") from exc
        entries = (raw or {}).get("models") if isinstance(raw, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ModelsFileError(f"{path}: expected a non-empty `models:` list")
        specs = []
        for entry in entries:
            try:
                spec = ModelSpec.model_validate(entry)
            except ValidationError as exc:
                raise ModelsFileError(f"{path}: invalid model entry {entry!r}: {exc}") from exc
            local = path.parent / spec.source
            if spec.source.startswith((".", "/")) or local.exists():
                spec = spec.model_copy(update={"source": str(local.resolve())})
            specs.append(spec)
        return cls(specs)
