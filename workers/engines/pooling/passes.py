"""How a batch's inputs are cut into forward passes: bounded padding, and work for idle streams."""

from __future__ import annotations

from collections.abc import Sequence

#: Fewest inputs in a pass cut off a batch for an idle stream: smaller passes cost more per input
#: than the stream's help saves.
MIN_SHARED_PASS = 4


def plan_passes(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group input indices into forward passes of at most ``max_tokens`` padded tokens.

    Inputs are sorted by length so each pass pads little; a pass is padded to its longest input, so
    ``longest * count <= max_tokens``. An input longer than the budget gets a pass of its own.
    """
    passes: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        # Ascending order: the input being added is the longest of the pass so far.
        if current and lengths[index] * (len(current) + 1) > max_tokens:
            passes.append(current)
            current = []
        current.append(index)
    if current:
        passes.append(current)
    return passes


def spread_passes(passes: list[list[int]], ways: int, min_rows: int = MIN_SHARED_PASS) -> list[list[int]]:
    """``passes`` cut until there are ``ways`` of them, halving the largest, none under ``min_rows``
    inputs: work for ``ways`` streams at once. A pass keeps its inputs' order (sorted by length)."""
    passes = [list(p) for p in passes]
    while len(passes) < ways:
        largest = max(range(len(passes)), key=lambda k: len(passes[k]))
        rows = passes[largest]
        if len(rows) < 2 * min_rows:
            break
        half = len(rows) // 2
        passes[largest : largest + 1] = [rows[:half], rows[half:]]
    return passes
