"""Constrained decoding: the output of a choice must match a grammar (a JSON Schema, a regex, ...).

How it fits together (read this to build on it, e.g. ``tool_choice`` grammars):

* **The spec** is what a job carries: a :data:`shared.jobs.Constraint` in ``GenerateJob.constraint``,
  one of ``json_schema``, ``regex``, ``choice``, ``grammar`` (Lark or GBNF) and ``tags``. Its
  ``param`` is the request parameter it came from; every error about it names that parameter.
  To constrain a job, build the spec, call ``shared.grammars.check(spec)`` in the API (a 400 before
  queueing) and set it on the job: the generation engine does the rest, for prefill and decode.
* **Tool calls** are a ``TagsConstraint``: one ``Tag`` per tool (``begin`` e.g.
  ``'<tool_call>\n{"name": "get_weather", "arguments": '``, the tool's ``parameters`` as
  ``json_schema``, ``end`` e.g. ``'}\n</tool_call>'``), all opened by one ``trigger``
  (``"<tool_call>"``). ``required=False`` is the lazy grammar of ``tool_choice: auto`` (free text;
  once the model writes the trigger, a whole valid call must follow); ``required=True`` is
  ``required`` or a named function (one tag, ``parallel=False``). A trigger that is one of the
  model's special tokens is matched as that token; its text then reaches the output only if the
  engine decodes special tokens.
* **A backend** (:class:`ConstraintBackend`, from :func:`get_backend`) is a grammar library.
  ``check(spec)`` needs no tokenizer. ``bind(vocabulary)`` returns the backend for one model
  (:class:`Compiler`); the engine makes it once per model, on the first constrained job.
* **A compiler** turns a spec into a :class:`Matcher` (``compile``, in the submitting thread, never
  the engine thread), and fills the token masks of many rows at once (``fill``).
* **A matcher** is one choice's place in the grammar. ``fill(bitmask, row)`` writes the tokens it
  allows next, ``accept(token)`` advances it, ``done`` says the grammar is complete and allows
  nothing but EOS (the choice ends with ``stop``), ``copy()`` gives each of ``n`` choices its own.
  ``forced()`` (the tokens the grammar forces from here, if any) and ``allows(token)`` (a check
  without advancing) let the engine skip most masks and steps: it takes a forced run as it is, in
  one step, and checks a token sampled without a mask, masking only when it is refused
  (:mod:`workers.engines.generation.constrained`).

The bitmask is numpy ``int32 [rows, ceil(vocab / 32)]`` (:mod:`workers.constraints.bitmask`): bit
``j`` of word ``w`` is token ``32 * w + j``, 1 = allowed, the layout llguidance and xgrammar share.
JSON is compact (no whitespace between tokens: a small model could pad with it forever). Bad specs
raise :class:`shared.errors.InvalidRequest` naming ``spec.param``. Work is bounded: a spec is at
most :data:`shared.jobs.MAX_CONSTRAINT_BYTES` as JSON, compiling it is capped by the library's
limits (grammar size, lexer fuel), and so is each mask (per-step fuel); a matcher that runs out
says so through ``error`` and its job fails with a 400: the engine thread never waits on it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from shared.jobs import Constraint
    from workers.constraints.vocabulary import Vocabulary

DEFAULT_BACKEND = "llguidance"


class Matcher(Protocol):
    """One choice's state in its grammar; used by one thread at a time."""

    def fill(self, bitmask: np.ndarray, row: int) -> None:
        """Write the tokens allowed next into ``bitmask[row]``."""
        ...

    def accept(self, token: int) -> bool:
        """Advance past ``token``; False if the grammar does not allow it (``error`` says why)."""
        ...

    def forced(self) -> list[int]:
        """The tokens the grammar forces from here, in order (empty: the next token is a choice);
        cheaper than a mask. It must be exact: ``fill`` would allow the first and no other, and
        accepting each in turn is valid."""
        ...

    def allows(self, token: int) -> bool:
        """Whether ``token`` may come next, without advancing (a check for a pick drawn unmasked)."""
        ...

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more but EOS (or EOS was accepted)."""
        ...

    @property
    def error(self) -> str | None:
        """Why the matcher cannot go on (a refused token, a step over its work limit); None if it can."""
        ...

    def copy(self) -> Matcher:
        """An independent matcher in the same state."""
        ...


class Compiler(Protocol):
    """A backend bound to one model's vocabulary."""

    def compile(self, spec: Constraint) -> Matcher:
        """A matcher at the start of the output; raises :class:`InvalidRequest` naming ``spec.param``."""
        ...

    def fill(self, rows: Sequence[tuple[Matcher, int]], bitmask: np.ndarray) -> None:
        """``matcher.fill(bitmask, row)`` for every pair, in parallel where the library can."""
        ...


class ConstraintBackend(Protocol):
    """A grammar library."""

    name: str

    def check(self, spec: Constraint) -> None:
        """Refuse, without a tokenizer, a spec the library cannot compile (:class:`InvalidRequest`)."""
        ...

    def bind(self, vocabulary: Vocabulary) -> Compiler:
        """This backend for one model (may take seconds for a large vocabulary: do it once)."""
        ...


@functools.cache
def get_backend(name: str = DEFAULT_BACKEND) -> ConstraintBackend:
    """The backend called ``name`` (imported on first use: the library loads only where it is used)."""
    if name == "llguidance":
        from workers.constraints.llguidance_backend import LLGuidanceBackend

        return LLGuidanceBackend()
    raise ValueError(f"unknown constraint backend {name!r}")
