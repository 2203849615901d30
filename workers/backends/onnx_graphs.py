"""What is exported to ONNX: a sentence-transformers embedder and a one-logit cross-encoder.

Each builder loads the checkpoint with sentence-transformers on the CPU in float32 (as the torch backend
does), traces its forward pass with ``torch.onnx.export`` (the TorchScript exporter: no optimum, no
onnxscript) and saves the tokenizer sentence-transformers uses beside ``model.onnx``.

- **Embeddings**: the transformer, then the checkpoint's own sentence-transformers modules after it
  (``Pooling`` with its configured mode: mean, cls, max, lasttoken...; ``Dense``; ``Normalize``) run as
  they are inside the traced graph, then an L2 normalisation (the torch backend's
  ``normalize_embeddings=True``). So pooling and normalisation are sentence-transformers' code, not a
  re-implementation. A checkpoint with any other module (a router, a custom module) is refused.
- **Rerank**: the ``*ForSequenceClassification`` model's logit, with no activation: the engine applies
  the sigmoid (or not, for raw scores) as it does for the torch backend's logits.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from workers.backends.onnx_export import MODEL_FILE, OPSET

#: Modules allowed after the transformer of an exported embedder (sentence-transformers class names).
_EMBEDDING_MODULES = {"Pooling", "Dense", "Normalize"}
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class UnsupportedCheckpoint(ValueError):
    """A checkpoint this exporter cannot export faithfully; serve it with ``backend: torch``."""


def _input_names(tokenizer: Any, model: torch.nn.Module) -> list[str]:
    """The inputs the graph takes: ids and mask always, token types where the tokenizer makes them."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names and getattr(model.config, "type_vocab_size", 0):
        names.append("token_type_ids")
    return names


class _Embedding(torch.nn.Module):
    """Transformer, the checkpoint's own pooling modules, L2 normalisation: one vector per row."""

    def __init__(
        self, transformer: torch.nn.Module, modules: list[torch.nn.Module], names: list[str]
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.after = torch.nn.ModuleList(modules)
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.names, inputs, strict=True))
        hidden = self.transformer(**features).last_hidden_state
        state: dict[str, Any] = {"token_embeddings": hidden, "attention_mask": features["attention_mask"]}
        for module in self.after:
            state = module(state)
        return torch.nn.functional.normalize(state["sentence_embedding"].float(), dim=-1)


class _Logit(torch.nn.Module):
    """A sequence classifier's one logit per row."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).logits[:, 0]


def _export(module: torch.nn.Module, tokenizer: Any, names: list[str], pairs: bool, dest: Path) -> None:
    """Trace ``module`` on a small padded batch with dynamic batch and sequence axes into ``dest``."""
    if pairs:
        sample = tokenizer(
            ["a query", "another query"],
            ["a document", "a longer document here"],
            padding=True,
            return_tensors="pt",
        )
    else:
        sample = tokenizer(
            ["a sentence", "a longer sentence to pad the first"], padding=True, return_tensors="pt"
        )
    args = tuple(sample[name] for name in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about shape checks it bakes in (transformers' mask helpers); the exported
        # graph is checked against the torch backend on other shapes by the tests.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(dest / MODEL_FILE),
            dynamo=False,
            input_names=names,
            output_names=["output"],
            dynamic_axes={**axes, "output": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )


def build_embedding(source: str, dest: Path) -> dict[str, Any]:
    """Export the sentence-transformers model at ``source`` into ``dest``; the manifest's fields."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(source, device="cpu", model_kwargs={"dtype": torch.float32})
    modules = list(model)
    first = modules[0]
    others = [type(m).__name__ for m in modules[1:]]
    transformer = getattr(first, "auto_model", None)
    if type(first).__name__ != "Transformer" or transformer is None or not set(others) <= _EMBEDDING_MODULES:
        raise UnsupportedCheckpoint(
            f"{source}: modules {[type(m).__name__ for m in modules]} cannot be exported to ONNX"
            " (a Transformer, then Pooling, Dense or Normalize); serve it with backend: torch"
        )
    tokenizer = model.tokenizer
    names = _input_names(tokenizer, transformer)
    _export(_Embedding(transformer, modules[1:], names), tokenizer, names, pairs=False, dest=dest)
    tokenizer.save_pretrained(dest)
    return {
        "inputs": names,
        "max_seq_length": model.max_seq_length,
        "dimension": int(model.get_embedding_dimension()),
        "modules": [type(m).__name__ for m in modules],
    }


def build_rerank(source: str, dest: Path) -> dict[str, Any]:
    """Export the one-logit CrossEncoder at ``source`` into ``dest``; the manifest's fields."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(source, device="cpu", model_kwargs={"dtype": torch.float32})
    modules = list(model)
    classifier = getattr(modules[0], "auto_model", None) if len(modules) == 1 else None
    if classifier is None or not hasattr(classifier, "config"):
        raise UnsupportedCheckpoint(
            f"{source}: cross-encoder modules {[type(m).__name__ for m in modules]} cannot be exported"
            " to ONNX (one sequence classifier); serve it with backend: torch"
        )
    if model.num_labels != 1:
        raise ValueError(f"{source}: a reranker needs one output label, not {model.num_labels}")
    tokenizer = model.tokenizer
    names = _input_names(tokenizer, classifier)
    _export(_Logit(classifier, names), tokenizer, names, pairs=True, dest=dest)
    tokenizer.save_pretrained(dest)
    return {"inputs": names, "max_seq_length": model.max_seq_length, "modules": ["Transformer"]}
