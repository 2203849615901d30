"""Fixtures for the unit tests: offline Hugging Face and the default checkpoints built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything imports huggingface_hub, which reads these once: tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def default_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tiny-chat, tiny-reranker and all-MiniLM-L6-v2, built once per test session."""
    from bootstrap.checkpoints import make_default_models

    models_dir = tmp_path_factory.mktemp("models")
    make_default_models(models_dir)
    return models_dir
