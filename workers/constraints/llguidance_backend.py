"""The llguidance backend: JSON Schema, regex, choice, Lark/GBNF and tag grammars (``workers.constraints``).

Grammars (their text: :mod:`shared.grammars`) compile in milliseconds; compile and every mask are
bounded by :data:`shared.grammars.LIMITS` (grammar size, lexer fuel, Earley items per step), and a
matcher never raises on a grammar error, a refused token or a spent limit: it enters an error
state, read through ``error``.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence

import llguidance
import llguidance.numpy
import numpy as np
from llguidance import LLExecutor, LLMatcher, LLTokenizer, TokenizerWrapper

from shared import grammars
from shared.jobs import Constraint
from workers.constraints.vocabulary import Vocabulary

#: Distinct texts whose tokenization each bound vocabulary keeps (see :class:`_Tokens`).
ENCODE_CACHE_SIZE = 4096
#: Compiled grammars each bound vocabulary keeps (their start states; a job gets a copy).
COMPILED_CACHE_SIZE = 32
#: Rows from which a step's masks are filled by llguidance's thread pool (vLLM's threshold); fewer
#: are filled one by one: the pool's threads wait for work busily, which costs a small machine a core.
PARALLEL_FILL_ROWS = 128


class LLGuidanceMatcher:
    """A :class:`workers.constraints.Matcher` over an ``llguidance.LLMatcher``."""

    def __init__(self, matcher: LLMatcher, forcing: bool = True) -> None:
        self.inner = matcher
        #: Whether the grammar lets llguidance force bytes (a Lark grammar may switch it off).
        self._forcing = forcing

    def fill(self, bitmask: np.ndarray, row: int) -> None:
        llguidance.numpy.fill_next_token_bitmask(self.inner, bitmask, row)

    def accept(self, token: int) -> bool:
        return self.inner.consume_token(token)

    def forced(self) -> list[int]:
        # llguidance's fast-forward tokens: the forced bytes, tokenized so that none of them could
        # merge with what follows. Its mask is then exactly the first (compute_mask returns that
        # singleton when the grammar forces bytes); an error state gives none.
        if not self._forcing:
            return []
        return self.inner.compute_ff_tokens()

    def allows(self, token: int) -> bool:
        return self.inner.validate_tokens([token]) == 1

    @property
    def done(self) -> bool:
        return self.inner.is_stopped() and not self.inner.is_error()

    @property
    def error(self) -> str | None:
        return grammars.message(self.inner.get_error()) or "error" if self.inner.is_error() else None

    def copy(self) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self.inner.deep_copy(), self._forcing)


class LLGuidanceCompiler:
    """llguidance bound to one model's vocabulary."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self._vocabulary = vocabulary
        self._tokenizer = LLTokenizer(
            TokenizerWrapper(_Tokens(vocabulary)),
            n_vocab=len(vocabulary.tokens),
            eos_token=sorted(vocabulary.eos),
        )
        self._executor = LLExecutor()
        #: Compiled specs (by their JSON), least recently used first: start states to copy.
        self._compiled: OrderedDict[str, LLGuidanceMatcher] = OrderedDict()
        self._compiled_lock = threading.Lock()

    def compile(self, spec: Constraint) -> LLGuidanceMatcher:
        # Clients send the same schema again and again (one pydantic model per call site): a
        # compiled grammar's start state is kept and each job gets a copy (~1 us, where compiling
        # takes ~0.5 ms and holds the GIL, so the engine thread waits meanwhile).
        key = spec.model_dump_json()
        with self._compiled_lock:
            template = self._compiled.get(key)
            if template is not None:
                self._compiled.move_to_end(key)
        if template is None:
            grammar = grammars.grammar_text(spec, self._vocabulary.special_id)
            matcher = LLMatcher(self._tokenizer, grammar, log_level=0, limits=grammars.LIMITS)
            if matcher.is_error():
                raise grammars.refused(spec, matcher.get_error())
            # With ``no_forcing`` a mask may allow more than the fast-forward tokens: none is forced.
            template = LLGuidanceMatcher(matcher, forcing="no_forcing" not in grammar)
            with self._compiled_lock:
                self._compiled[key] = template
                while len(self._compiled) > COMPILED_CACHE_SIZE:
                    self._compiled.popitem(last=False)
        return template.copy()  # the template itself is never handed out: nothing advances it

    def fill(self, rows: Sequence[tuple[LLGuidanceMatcher, int]], bitmask: np.ndarray) -> None:
        if len(rows) < PARALLEL_FILL_ROWS:
            for matcher, row in rows:
                matcher.fill(bitmask, row)
            return
        pairs = [(m.inner, row) for m, row in rows]
        llguidance.numpy.fill_next_token_bitmask_par(self._executor, pairs, bitmask)


class LLGuidanceBackend:
    """The :class:`workers.constraints.ConstraintBackend` of llguidance."""

    name = "llguidance"

    def check(self, spec: Constraint) -> None:
        grammars.check(spec)

    def bind(self, vocabulary: Vocabulary) -> LLGuidanceCompiler:
        return LLGuidanceCompiler(vocabulary)


class _Tokens:
    """The vocabulary as llguidance's ``TokenizerWrapper`` reads a tokenizer."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.tokens = list(vocabulary.tokens)
        self.special_token_ids = sorted(vocabulary.special)
        self.eos_token_id = min(vocabulary.eos) if vocabulary.eos else None
        self.bos_token_id = None
        self._encode = vocabulary.encode
        # llguidance tokenizes the bytes a grammar forces (``","age":``, a property name, a closing
        # brace) at nearly every step, in a call back into Python: ~20 us through a tokenizer, and
        # about 2/3 of a JSON Schema's mask cost with a small vocabulary. The texts repeat from step
        # to step and from request to request (a few hundred distinct ones per schema), so they
        # are kept. Tokenizing is a pure function of the text; the cache is bounded and thread-safe.
        self._cached = functools.lru_cache(maxsize=ENCODE_CACHE_SIZE)(self._tokenize)

    def __call__(self, text: str | bytes) -> list[int]:
        return list(self._cached(text))  # a copy: the caller owns its list

    def _tokenize(self, text: str | bytes) -> tuple[int, ...]:
        # llguidance hands over valid UTF-8 only (it tokenizes any cut character itself).
        return tuple(self._encode(text.decode("utf-8", "replace") if isinstance(text, bytes) else text))
