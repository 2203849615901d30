"""Constrained decoding in the generation engine: grammars compiled per job, picks checked per step.

One hook serves prefill and decode. :meth:`Constraints.start` is called with a step's rows before
the model runs; a helper thread then works on the constrained rows while the forward pass computes
the logits (that work depends only on the tokens accepted so far, and both release the GIL). After
the forward pass :meth:`Constraints.apply` masks the rows that need a mask, the engine samples every
row, and :meth:`Constraints.settle` makes each constrained row's token one its grammar allows. A
constrained row goes one of three ways (rows without a constraint are left as they are):

* **forced**: the grammar allows exactly one token (a property name, ``","``, a closing brace: most
  of a JSON Schema's tokens). The helper asks the matcher (:meth:`Matcher.forced`, cheaper than a
  mask) and that token is taken without a draw: the masked distribution is that one token.
  So are the forced tokens after it (``"name":"`` is several), all in this step, when the batch
  takes several tokens a row (:attr:`DecodeBatch.multi_token`): the next step feeds them to the
  model together, as a prefill does, where one step each would give the same tokens (SGLang's
  jump-forward decoding). A schema's reply then takes far fewer decode steps than tokens.
* **masked**: the helper fills the row's token mask, and its disallowed tokens are set to ``-inf``
  in the processed logits before sampling and logprobs, so such a token can neither be drawn nor
  reported as likely. A row that asked for logprobs always goes this way (they stay truthful), and
  so does a row whose draw is truncated (``top_k``, ``top_p``, ``min_p``: truncating the unmasked
  logits is not truncating the masked ones).
* **drawn first** (llama.cpp's grammar sampler): the row is sampled without a mask and the matcher
  checks the token (:meth:`Matcher.allows`, without consuming it). If it is allowed, it is taken and
  no mask was computed; if not, the row's mask is filled, applied, and the row is sampled again. That
  is exactly the masked distribution: an allowed ``x`` of unmasked probability ``p(x)``, where the
  allowed tokens hold ``Z``, is drawn with ``p(x) + (1 - Z) p(x) / Z = p(x) / Z``; greedy takes the
  same token either way. A refused draw costs a check and a second draw more than the mask alone
  would, so a row whose draw was refused goes masked for its next 1, 2, 4 ... :data:`MAX_BACKOFF`
  unforced steps (its :class:`Pace`), and draws first again after that; an allowed draw halves it.
  A model that writes what the grammar wants (a trained one, asked for JSON) nearly always draws
  first; a random-weight one, whose draws are mostly refused, mostly goes masked.

Each row's way depends on its own parameters and history only, so a seed gives the same output
alone or in any batch (a drawn-first row may use a second draw of its generator in a step).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from shared.jobs import Constraint
from workers.constraints import Compiler, ConstraintBackend, Matcher, bitmask, get_backend
from workers.engines import sampling
from workers.engines.generation.model import LanguageModel
from workers.engines.sampling import SequenceSampler

#: The most unforced steps a row goes masked after a refused draw (0: every unforced step draws first).
MAX_BACKOFF = 16


@dataclass
class Pace:
    """One row's way through its unforced steps: masked for ``masked`` more, after refused draws."""

    #: Unforced steps still to go masked.
    masked: int = 0
    #: The masked steps the next refused draw buys (doubling up to :data:`MAX_BACKOFF`; 0: none yet).
    backoff: int = 0

    @property
    def draws_first(self) -> bool:
        return self.masked == 0

    def drawn(self, allowed: bool) -> None:
        """A draw-first pick was allowed (the backoff halves) or refused (it doubles: masked for a
        while). A row whose draws are mostly allowed draws first nearly always; one whose draws are
        mostly refused (past about half: there a refused draw's extra check and draw cost more than
        the masks an allowed one saves) drifts to masked steps and a draw every :data:`MAX_BACKOFF`."""
        if allowed:
            self.backoff //= 2
        else:
            self.backoff = min(max(2 * self.backoff, 1), MAX_BACKOFF)
            self.masked = self.backoff

    def masked_step(self) -> None:
        self.masked = max(self.masked - 1, 0)


class Row(Protocol):
    """What :class:`Constraints` reads of a step's row (a ``SequenceState``)."""

    matcher: Matcher | None
    sampler: SequenceSampler
    pace: Pace


@dataclass
class Masks:
    """One step's constrained rows, being worked on by the helper thread."""

    #: Constrained rows of the step: row ``rows[j]`` has ``matchers[j]``, ``bitmask[j]`` and ``ways[j]``.
    rows: list[int]
    matchers: list[Matcher]
    #: ``"mask"`` (always masked), ``"forced"`` (forced, else masked), ``"draw"`` (forced, else drawn first).
    ways: list[str]
    bitmask: np.ndarray
    filled: Future[None]
    #: Set by the helper: position ``j`` in ``rows`` -> the tokens the grammar forces from there.
    forced: dict[int, list[int]] = field(default_factory=dict)
    #: Positions in ``rows`` whose mask the helper filled (the others' rows are left as they are).
    masked: list[int] = field(default_factory=list)


class Constraints:
    """One model's grammar compiler (bound to its vocabulary on the first constrained job) and picks."""

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

    def start(self, rows: Sequence[Row]) -> Masks | None:
        """Start the helper on a step's constrained rows (engine thread; None: no row is constrained).

        The matchers are the helper's until :meth:`apply`: nothing may accept a token meanwhile.
        """
        index = [i for i, row in enumerate(rows) if row.matcher is not None]
        if not index:
            return None
        assert self._compiler is not None and self._filler is not None  # compile() made them
        matchers: list[Matcher] = []
        ways: list[str] = []
        for i in index:
            row = rows[i]
            assert row.matcher is not None
            matchers.append(row.matcher)
            params = row.sampler.params
            if params.logprobs is not None:
                ways.append("mask")
            elif sampling.truncated(params) or not row.pace.draws_first:
                ways.append("forced")
            else:
                ways.append("draw")
        mask = bitmask.allocate(len(index), self._lm.vocab_size)
        step = Masks(index, matchers, ways, mask, Future())
        step.filled = self._filler.submit(self._prepare, step)  # during the forward pass
        return step

    def _prepare(self, step: Masks) -> None:
        """The helper's work: forced tokens, then the masks of the rows that go masked."""
        assert self._compiler is not None
        for j, (matcher, way) in enumerate(zip(step.matchers, step.ways, strict=True)):
            if way != "mask":
                run = matcher.forced()
                if run:
                    step.forced[j] = run
        step.masked = [j for j, way in enumerate(step.ways) if way != "draw" and j not in step.forced]
        if step.masked:
            self._compiler.fill([(step.matchers[j], j) for j in step.masked], step.bitmask)

    def pick(
        self, logits: torch.Tensor, rows: Sequence[Row], masks: Masks | None, *, runs: bool
    ) -> list[tuple[list[int], sampling.RowLogprobs | None]]:
        """Each row's next tokens (ones its grammar allows), and the first one's logprobs when its
        job asked: :meth:`apply`, sampling, :meth:`settle`, then the logprobs of what was finally
        drawn from. A row gets one token, or with ``runs`` (the batch takes several tokens a row)
        every token its grammar forces from here; a row with logprobs is masked, so gets one."""
        samplers = [row.sampler for row in rows]
        processed = self.apply(sampling.process(logits, samplers), masks)
        forced = {} if masks is None else {masks.rows[j]: run for j, run in masks.forced.items()}
        tokens = self._draw(processed, samplers, forced)
        processed = self.settle(processed, rows, tokens, masks)  # refused draws
        logprobs = sampling.logprobs(processed, samplers, tokens)
        picked = [forced[i] if runs and i in forced else [token] for i, token in enumerate(tokens)]
        for sampler, run in zip(samplers, picked, strict=True):
            for token in run:
                sampler.record(token)
        return list(zip(picked, logprobs, strict=True))

    @staticmethod
    def _draw(
        processed: torch.Tensor, samplers: list[SequenceSampler], forced: dict[int, list[int]]
    ) -> list[int]:
        """Each row's token: a forced row's first forced one, the others sampled. A forced token
        takes no draw of its row's generator, so a seed gives the same tokens whether the batch
        takes a forced run in one step or in one step a token."""
        if not forced:
            return sampling.sample(processed, samplers)
        free = [i for i in range(len(samplers)) if i not in forced]
        tokens = [forced[i][0] if i in forced else 0 for i in range(len(samplers))]
        if free:
            index = torch.tensor(free, device=processed.device)
            drawn = sampling.sample(processed.index_select(0, index), [samplers[i] for i in free])
            for i, token in zip(free, drawn, strict=True):
                tokens[i] = token
        return tokens

    def apply(self, logits: torch.Tensor, masks: Masks | None) -> torch.Tensor:
        """``logits`` with each masked row's disallowed tokens at ``-inf`` (the other rows as they are)."""
        if masks is None:
            return logits
        masks.filled.result()
        if not masks.masked:
            return logits
        return self._masked(logits, masks, masks.masked)

    def settle(
        self,
        processed: torch.Tensor,
        rows: Sequence[Row],
        tokens: list[int],
        masks: Masks | None,
    ) -> torch.Tensor:
        """Make ``tokens`` (sampled from ``processed``, after :meth:`apply`) ones the grammars allow.

        Forced rows have their token already; drawn-first rows keep an allowed token, and the others
        are masked and sampled again (``tokens`` is changed in place). Returns ``processed`` with the
        masks applied since. A row whose matcher is in error keeps its token: accepting it fails
        its job, as a masked row's does.
        """
        if masks is None:
            return processed
        masks.filled.result()
        refused: list[int] = []
        for j, (i, matcher, way) in enumerate(zip(masks.rows, masks.matchers, masks.ways, strict=True)):
            pace = rows[i].pace
            if j in masks.forced:
                continue
            if way == "draw":
                allowed = matcher.error is not None or matcher.allows(tokens[i])
                pace.drawn(allowed)
                if not allowed:
                    refused.append(j)
            elif way == "forced":
                pace.masked_step()
        if not refused:
            return processed
        assert self._compiler is not None
        self._compiler.fill([(masks.matchers[j], j) for j in refused], masks.bitmask)
        processed = self._masked(processed, masks, refused)
        redrawn = [masks.rows[j] for j in refused]
        index = torch.tensor(redrawn, device=processed.device)
        again = sampling.sample(processed.index_select(0, index), [rows[i].sampler for i in redrawn])
        for i, token in zip(redrawn, again, strict=True):
            tokens[i] = token
        return processed

    def _masked(self, logits: torch.Tensor, masks: Masks, positions: list[int]) -> torch.Tensor:
        """``logits`` with the masks of ``positions`` (in ``masks.rows``) applied."""
        for j in positions:
            if masks.matchers[j].error is not None:
                # Its job fails when the sampled token is refused; all-masked logits would be NaN.
                masks.bitmask[j] = -1
        if len(positions) == len(masks.rows):
            return bitmask.apply(logits, masks.rows, masks.bitmask)
        return bitmask.apply(logits, [masks.rows[j] for j in positions], masks.bitmask[positions])

    def close(self) -> None:
        """Stop the helper thread."""
        if self._filler is not None:
            self._filler.shutdown(wait=False, cancel_futures=True)
