"""Text generation with continuous batching (see ``engine``).

``model``: the protocols a language model implements for the engine; ``text``: detokenization and
stop strings; ``state``: the engine's requests, sequences, prefill plans and outbox; ``prepare``:
a job checked and tokenized; ``engine``: the scheduler.
"""

from workers.engines.generation.engine import GenerationEngine
from workers.engines.generation.model import DecodeBatch, LanguageModel

__all__ = ["DecodeBatch", "GenerationEngine", "LanguageModel"]
