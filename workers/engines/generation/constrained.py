"""Constrained decoding in the generation engine: grammars compiled per job, masks applied per step.

One hook serves prefill and decode: :meth:`Constraints.start` is called with a step's rows before
the model runs, and fills the constrained rows' token masks on a helper thread while the forward
pass computes the logits (a mask depends only on the tokens accepted so far, and both release the
GIL: on CPU the fill, ~60 us per row, hides behind the model). :meth:`Constraints.apply` then sets
the disallowed tokens of the processed logits to ``-inf``, before sampling and logprobs, so such a
token can neither be drawn nor reported as likely. Rows without a constraint are left as they are.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from shared.jobs import Constraint
from workers.constraints import Compiler, ConstraintBackend, Matcher, bitmask, get_backend
from workers.engines.generation.model import LanguageModel


@dataclass
class Masks:
    """The masks of one step's constrained rows, being filled."""

    #: The rows of the step that have a matcher, in order: row ``rows[j]`` is ``bitmask[j]``.
    rows: list[int]
    matchers: list[Matcher]
    bitmask: np.ndarray
    filled: Future[None]


class Constraints:
    """One model's grammar compiler (bound to its vocabulary on the first constrained job) and masks."""

    def __init__(self, lm: LanguageModel, backend: ConstraintBackend | None = None) -> None:
        self._lm = lm
        self._backend = backend or get_backend()
        self._compiler: Compiler | None = None
        self._filler: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def compile(self, spec: Constraint) -> Matcher:
        """A matcher for ``spec`` (in the submitting thread); raises :class:`InvalidRequest`."""
        with self._lock:  # binding takes seconds for a large vocabulary: once, whoever comes first
            if self._compiler is None:
                self._compiler = self._backend.bind(self._lm.vocabulary())
                self._filler = ThreadPoolExecutor(1, thread_name_prefix="constraint-masks")
            compiler = self._compiler
        return compiler.compile(spec)

    def start(self, matchers: Sequence[Matcher | None]) -> Masks | None:
        """Start filling the masks of a step's rows (engine thread; None: no row is constrained).

        The matchers are the filler's until :meth:`apply`: nothing may accept a token meanwhile.
        """
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return None
        assert self._compiler is not None and self._filler is not None  # compile() made them
        owned = [m for m in matchers if m is not None]
        mask = bitmask.allocate(len(rows), self._lm.vocab_size)
        filled = self._filler.submit(self._compiler.fill, [(m, j) for j, m in enumerate(owned)], mask)
        return Masks(rows, owned, mask, filled)

    def apply(self, logits: torch.Tensor, masks: Masks | None) -> torch.Tensor:
        """``logits`` with each constrained row's disallowed tokens at ``-inf``."""
        if masks is None:
            return logits
        masks.filled.result()
        for j, matcher in enumerate(masks.matchers):
            if matcher.error is not None:
                # Its job fails when the sampled token is refused; all-masked logits would be NaN.
                masks.bitmask[j] = -1
        return bitmask.apply(logits, masks.rows, masks.bitmask)

    def close(self) -> None:
        """Stop the filler thread."""
        if self._filler is not None:
            self._filler.shutdown(wait=False, cancel_futures=True)
