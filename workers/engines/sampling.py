"""Logits processing, sampling and logprobs for a batch of sequences: row ``i`` is sequence ``i``.

The order is vLLM's. ``logit_bias`` is added, then the penalties are applied (repetition over the
prompt and the output, HF/vLLM style; frequency and presence over the output, OpenAI's formula):
that gives the *processed* logits. Logprobs are their log-softmax, so they show the penalties and
biases the client asked for but not the temperature or the top-k/top-p/min-p cut (every candidate
keeps a finite value, also at temperature 0). Temperature 0 takes the argmax of the processed
logits; otherwise they are divided by the temperature, masked by ``min_p``, ``top_k`` and then
``top_p`` (of what is left), and a token is drawn with the sequence's own generator.

A row is processed with its own parameters only, and always drawn from in vocabulary order, so a
seeded sequence picks the same tokens alone or next to any other sequences. The work per step is
tensor ops over ``[rows, vocab]``; Python loops run over rows (a few dozen), never over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shared.jobs import SamplingParams

_SEED_MASK = 0xFFFF_FFFF_FFFF_FFFF
#: What OpenAI reports for a token the distribution rules out entirely (a finite stand-in for -inf).
MIN_LOGPROB = -9999.0
#: Tokens searched for the top-p nucleus before falling back to sorting the whole vocabulary.
NUCLEUS_HEAD = 1024
#: vLLM's epsilon: a lower temperature samples greedily (dividing by it would overflow).
GREEDY_TEMPERATURE = 1e-5
_LOGIT_LIMIT = 1e30


class SequenceSampler:
    """One sequence's sampling state: its parameters, its generator and the tokens the penalties see."""

    def __init__(self, params: SamplingParams, prompt: Sequence[int], seed: int | None) -> None:
        self.params = params
        self.seed = seed
        self._prompt = list(prompt) if params.repetition_penalty != 1 else []
        self._rng: torch.Generator | None = None
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None
        self._counts: torch.Tensor | None = None
        self._prompt_mask: torch.Tensor | None = None
        #: Tokens recorded before the counts tensor exists (it is made on the logits' device).
        self._pending: list[int] = []

    @property
    def penalised(self) -> bool:
        """Whether any penalty applies, so the output tokens must be counted."""
        p = self.params
        return p.repetition_penalty != 1 or p.presence_penalty != 0 or p.frequency_penalty != 0

    def uniform(self) -> float:
        """The next draw in [0, 1) of this sequence's generator (seeded from its seed, else the OS).

        A CPU generator whatever the model's device: one number per step costs nothing, and a seed
        gives the same numbers on every device.
        """
        if self._rng is None:
            self._rng = torch.Generator()
            if self.seed is None:
                self._rng.seed()
            else:
                self._rng.manual_seed(self.seed & _SEED_MASK)
        return float(torch.rand((), generator=self._rng, dtype=torch.float64))

    def bias(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``logit_bias`` as (token ids, values) tensors, made once."""
        if self._bias is None:
            items = sorted(self.params.logit_bias.items())
            ids = torch.tensor([i for i, _ in items], dtype=torch.long, device=device)
            values = torch.tensor([v for _, v in items], dtype=torch.float32, device=device)
            self._bias = ids, values
        return self._bias

    def history(self, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens of the prompt as a ``[vocab]`` mask, output token counts ``[vocab]``)."""
        if self._counts is None:
            self._prompt_mask = torch.zeros(vocab, dtype=torch.bool, device=device)
            if self._prompt:
                self._prompt_mask[torch.tensor(self._prompt, dtype=torch.long, device=device)] = True
            self._counts = torch.zeros(vocab, dtype=torch.float32, device=device)
            for token in self._pending:
                self._counts[token] += 1
            self._pending = []
        assert self._prompt_mask is not None
        return self._prompt_mask, self._counts

    def record(self, token: int) -> None:
        """Count a generated token for the penalties."""
        if not self.penalised:
            return
        if self._counts is None:
            self._pending.append(token)
        else:
            self._counts[token] += 1


@dataclass(frozen=True)
class RowLogprobs:
    """Logprob of the chosen token and the ``k`` likeliest (token id, logprob) pairs, best first."""

    logprob: float
    top: list[tuple[int, float]]


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)


def process(logits: torch.Tensor, rows: Sequence[SequenceSampler]) -> torch.Tensor:
    """The processed logits (float32): ``logit_bias`` added, then the penalties applied."""
    logits = logits.float()
    biased = [i for i, row in enumerate(rows) if row.params.logit_bias]
    penalised = [i for i, row in enumerate(rows) if row.penalised]
    if not biased and not penalised:
        return logits
    logits = logits.clone()  # the model's output may be a view of something it keeps
    device, vocab = logits.device, logits.shape[-1]
    if biased:
        pairs = [rows[i].bias(device) for i in biased]
        lengths = torch.tensor([len(ids) for ids, _ in pairs], device=device)
        row_ids = torch.repeat_interleave(torch.tensor(biased, device=device), lengths)
        token_ids = torch.cat([ids for ids, _ in pairs])
        logits.index_put_((row_ids, token_ids), torch.cat([v for _, v in pairs]), accumulate=True)
    if penalised:
        index = torch.tensor(penalised, device=device)
        histories = [rows[i].history(vocab, device) for i in penalised]
        prompt = torch.stack([mask for mask, _ in histories])
        counts = torch.stack([c for _, c in histories])
        params = [rows[i].params for i in penalised]
        sub = logits.index_select(0, index)
        generated = counts > 0
        # A penalty of 1 (or 0) leaves a value bit for bit as it was (x / 1, x * 1 and x - 0 are exact),
        # so a row is not changed by sharing these ops with rows that do want them.
        if any(p.repetition_penalty != 1 for p in params):
            repetition = _column([p.repetition_penalty for p in params], device)
            repeated = torch.where(sub > 0, sub / repetition, sub * repetition)
            # A tiny penalty must not overflow to inf (softmax of inf is NaN): clamp, exact for the rest.
            repeated = repeated.clamp(min=-_LOGIT_LIMIT, max=_LOGIT_LIMIT)
            sub = torch.where(prompt | generated, repeated, sub)
        if any(p.frequency_penalty != 0 for p in params):
            sub = sub - _column([p.frequency_penalty for p in params], device) * counts
        if any(p.presence_penalty != 0 for p in params):
            sub = sub - _column([p.presence_penalty for p in params], device) * generated.float()
        logits.index_copy_(0, index, sub)
    return logits


def truncated(params: SamplingParams) -> bool:
    """Whether ``min_p``, ``top_k`` or ``top_p`` may drop tokens before a draw (never when greedy)."""
    if params.temperature < GREEDY_TEMPERATURE:
        return False
    return params.min_p > 0 or params.top_k > 0 or params.top_p < 1


def sample(processed: torch.Tensor, rows: Sequence[SequenceSampler]) -> list[int]:
    """One token per row: argmax at temperature 0 (below 1e-5), else a draw from what truncation leaves."""
    hot = [i for i, row in enumerate(rows) if row.params.temperature >= GREEDY_TEMPERATURE]
    if len(hot) < len(rows):
        tokens = processed.argmax(dim=-1).tolist()
    else:
        tokens = [0] * len(rows)
    if not hot:
        return tokens
    device, vocab = processed.device, processed.shape[-1]
    params = [rows[i].params for i in hot]
    scaled = processed.index_select(0, torch.tensor(hot, device=device))
    scaled = scaled / _column([p.temperature for p in params], device)
    drop = _truncation(scaled, params, vocab)
    if drop is not None:
        scaled = scaled.masked_fill(drop, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    uniforms = torch.tensor([rows[i].uniform() for i in hot], dtype=torch.float32, device=device)
    for i, token in zip(hot, _inverse_cdf(probs, uniforms), strict=True):
        tokens[i] = token
    return tokens


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> list[int]:
    """Per row, the token where the cumulative probability passes that row's uniform draw.

    One draw per row and one batched search: a per-row ``torch.multinomial`` costs a random
    number per vocabulary entry, hundreds of milliseconds a step for 32 rows of a 150k vocabulary.
    """
    cdf = probs.cumsum(dim=-1)
    targets = (uniforms * cdf[:, -1]).unsqueeze(1)
    # right=True: the first token whose cumulative mass exceeds the target has a mass of its own.
    picked = torch.searchsorted(cdf, targets, right=True).clamp(max=probs.shape[-1] - 1)
    # A draw rounding up to the total lands past the end: take the likeliest token instead.
    empty = probs.gather(1, picked) <= 0
    picked = torch.where(empty, probs.argmax(dim=-1, keepdim=True), picked)
    return picked.squeeze(1).tolist()


def _truncation(scaled: torch.Tensor, params: list[SamplingParams], vocab: int) -> torch.Tensor | None:
    """Where ``min_p``, ``top_k`` and ``top_p`` drop tokens (True), in vocabulary order; None if nowhere.

    A row's mask depends on that row alone: a row that asks for nothing gets an all-False one.
    """
    device = scaled.device
    drop: torch.Tensor | None = None
    if any(p.min_p > 0 for p in params):
        probs = torch.softmax(scaled, dim=-1)
        floor = _column([p.min_p for p in params], device) * probs.max(dim=-1, keepdim=True).values
        drop = probs < floor
    if any(p.top_k > 0 for p in params):
        # A row without top_k takes k=1 (its mask is off anyway) so it never forces a full sort.
        ks = [min(p.top_k, vocab) if p.top_k > 0 else 1 for p in params]
        kth = scaled.topk(max(ks), dim=-1).values
        kth = kth.gather(1, torch.tensor(ks, device=device).unsqueeze(1) - 1)
        active = torch.tensor([p.top_k > 0 for p in params], device=device).unsqueeze(1)
        below = (scaled < kth) & active  # ties with the k-th value are kept
        drop = below if drop is None else drop | below
    if any(p.top_p < 1 for p in params):
        kept = scaled if drop is None else scaled.masked_fill(drop, float("-inf"))
        probs = torch.softmax(kept, dim=-1)
        top_p = _column([p.top_p if p.top_p < 1 else float("inf") for p in params], device)
        below = probs < _nucleus_floor(probs, top_p)
        drop = below if drop is None else drop | below
    return drop


def _nucleus_floor(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per row ``[rows, 1]``: the smallest probability inside the top-p nucleus (``inf`` top_p: 0).

    The nucleus is the smallest head whose mass reaches top_p: a token goes once the mass before it
    does. It is looked for in the top :data:`NUCLEUS_HEAD` tokens first (sorting a whole 150k
    vocabulary is slow); only rows whose nucleus is wider are sorted in full. Which way a row goes
    depends on that row alone.
    """
    head = probs.topk(min(NUCLEUS_HEAD, probs.shape[-1]), dim=-1).values
    floor = _floor_in(head, top_p)
    wide = (head.sum(dim=-1, keepdim=True) < top_p) & torch.isfinite(top_p)
    if bool(wide.any()):
        rows = wide.squeeze(1).nonzero().squeeze(1)
        full = probs.index_select(0, rows).sort(dim=-1, descending=True).values
        floor = floor.index_copy(0, rows, _floor_in(full, top_p.index_select(0, rows)))
    return floor


def _floor_in(ordered: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    gone = ordered.cumsum(dim=-1) - ordered >= top_p
    gone[:, 0] = False
    floor = ordered.masked_fill(gone, float("inf")).min(dim=-1, keepdim=True).values
    # A row without top_p keeps everything, also tokens outside the head.
    return torch.where(torch.isfinite(top_p), floor, torch.zeros_like(floor))


def logprobs(
    processed: torch.Tensor, rows: Sequence[SequenceSampler], tokens: Sequence[int]
) -> list[RowLogprobs | None]:
    """Per row that asked for logprobs: the chosen token's and the top ``k``, from the processed logits."""
    out: list[RowLogprobs | None] = [None] * len(rows)
    want = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
    if not want:
        return out
    device = processed.device
    index = torch.tensor(want, device=device)
    lp = torch.log_softmax(processed.index_select(0, index), dim=-1).clamp(min=MIN_LOGPROB)
    chosen = torch.tensor([tokens[i] for i in want], device=device).unsqueeze(1)
    chosen_lp = lp.gather(1, chosen).squeeze(1).tolist()
    ks = [min(rows[i].params.logprobs or 0, lp.shape[-1]) for i in want]
    top_values: list[list[float]] = [[] for _ in want]
    top_ids: list[list[int]] = [[] for _ in want]
    if max(ks):
        top = lp.topk(max(ks), dim=-1)
        top_values, top_ids = top.values.tolist(), top.indices.tolist()
    for row, i in enumerate(want):
        k = ks[row]
        out[i] = RowLogprobs(chosen_lp[row], list(zip(top_ids[row][:k], top_values[row][:k], strict=True)))
    return out


def prompt_logprobs(logits: torch.Tensor, prompt: Sequence[int], k: int) -> list[RowLogprobs]:
    """Logprobs of ``prompt[1:]`` from the model's raw logits ``[len(prompt) - 1, vocab]`` for them."""
    if len(prompt) < 2:
        return []
    lp = torch.log_softmax(logits.float(), dim=-1).clamp(min=MIN_LOGPROB)
    targets = torch.tensor(list(prompt[1:]), device=lp.device).unsqueeze(1)
    chosen = lp.gather(1, targets).squeeze(1).tolist()
    k = min(k, lp.shape[-1])
    pairs: list[list[tuple[int, float]]] = [[] for _ in chosen]
    if k:
        top = lp.topk(k, dim=-1)
        ids, values = top.indices.tolist(), top.values.tolist()
        pairs = [list(zip(i, v, strict=True)) for i, v in zip(ids, values, strict=True)]
    return [RowLogprobs(value, head) for value, head in zip(chosen, pairs, strict=True)]


def record(rows: Sequence[SequenceSampler], tokens: Sequence[int]) -> None:
    """Count the tokens just chosen, for the penalties of the next step."""
    for row, token in zip(rows, tokens, strict=True):
        row.record(token)
