"""Turn a ModelSpec's ``device`` and ``dtype`` strings into what torch wants."""

from __future__ import annotations

import torch

from shared.catalog import ModelSpec

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(spec_device: str) -> str:
    """``auto`` becomes the best available accelerator (cuda, then mps) or cpu; anything else is kept."""
    if spec_device != "auto":
        return spec_device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(spec_dtype: str, device: str) -> torch.dtype:
    """``auto`` is float32 on cpu (and mps), bfloat16 on cuda where supported, else float16."""
    if spec_dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[spec_dtype.lower()]
    except KeyError:
        raise ValueError(
            f"unknown dtype {spec_dtype!r}; expected auto, float32, float16 or bfloat16"
        ) from None


def token_limit(model_limit: int | None, spec: ModelSpec) -> int:
    """Tokens per input: the model's own limit, lowered by the spec's ``context_length`` if set."""
    limits = [limit for limit in (model_limit, spec.context_length) if limit]
    if not limits:
        raise ValueError(f"{spec.source}: no max sequence length; set context_length in the models file")
    return min(limits)
