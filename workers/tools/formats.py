"""The tool-call formats: how each model family writes calls, read back and enforced by a grammar.

* ``hermes`` (Hermes 2/3, Qwen2.5/3): ``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>``
  per call, after any text.
* ``llama3_json`` (Llama 3.1-3.3): ``{"name": ..., "parameters": {...}}`` as the whole answer,
  optionally after ``<|python_tag|>``, calls separated by ``;``.
* ``mistral`` (Mistral 7B v0.3, Nemo, Small 3.x): ``[TOOL_CALLS][{"name": ..., "arguments": {...}}]``,
  or ``[TOOL_CALLS]name{...}`` / ``[TOOL_CALLS]name[ARGS]{...}`` (tokenizers v11+).

Each format is a program for :class:`workers.tools.parsing.Reader` and the tags its grammar is made
of: ``tool_choice`` ``required`` and named calls, and ``auto`` calls once their marker is written,
follow the format by construction (:func:`workers.tools.grammar.tool_constraint`).
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.tools.parsing import Broken, Chars, Program, Reader

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"


@dataclass(frozen=True)
class ToolFormat:
    """A tool-call format: its parser program and its grammar's tags."""

    name: str
    program: Program
    #: Marker tokens the text must keep where a tokenizer makes them special (skipped when decoding).
    markers: tuple[str, ...]
    #: The text that opens a call; what the grammar writes before and after the arguments.
    trigger: str
    begin: str
    end: str

    def reader(self) -> Reader:
        """A parse of one choice's text."""
        return Reader(self.program)

    def tag_begin(self, function: str) -> str:
        return self.begin.replace("{name}", function)


def _hermes(r: Reader) -> Chars:
    while True:
        marker = yield from r.until((HERMES_OPEN,))
        if marker is None:
            return
        r.record()
        try:
            yield from r.call_object(("name",), ("arguments", "parameters"))
            yield from r.expect(HERMES_CLOSE, (yield from r.skip_blank()))
            r.settle()
        except Broken as broken:
            if not r.recover(broken, marker):
                return


def _llama3_json(r: Reader) -> Chars:
    r.record()
    try:
        char: str | None = yield from r.skip_blank()
        if char == PYTHON_TAG[0]:
            yield from r.expect(PYTHON_TAG, char)
            char = None
        while True:
            yield from r.call_object(("name",), ("parameters", "arguments"), char)
            char = yield from r.skip_blank()
            if char not in ";{":
                raise Broken(char)
            r.record()
            char = None if char == ";" else char
    except Broken as broken:
        if not r.recover(broken, ""):
            return
    yield from r.until(())  # text after the calls (or an answer that is not a call) is content


def _mistral(r: Reader) -> Chars:
    while True:
        marker = yield from r.until((MISTRAL_CALLS,))
        if marker is None:
            return
        r.record()
        try:
            char = yield from r.skip_blank()
            if char == "[":
                yield from _mistral_list(r)
            else:
                yield from _mistral_named(r, char)
            r.settle()
        except Broken as broken:
            if not r.recover(broken, marker):
                return


def _mistral_list(r: Reader) -> Chars:
    """``[{"name": ..., "arguments": ...}, ...]`` after its ``[``."""
    while True:
        yield from r.call_object(("name",), ("arguments",))
        char = yield from r.skip_blank()
        if char == "]":
            return
        if char != ",":
            raise Broken(char)


def _mistral_named(r: Reader, char: str) -> Chars:
    """``name{...}`` or ``name[ARGS]{...}``, from the name's first character."""
    name = []
    while char not in "{[":
        if not (char.isalnum() or char in "_-."):
            raise Broken(char)
        name.append(char)
        char = yield from r.char()
    if not name:
        raise Broken(char)
    if char == "[":
        yield from r.expect(MISTRAL_ARGS, char)
        char = yield from r.char()
    if char != "{":
        raise Broken(char)
    r.start_call("".join(name))
    yield from r.value(char, r.arguments)
    r.end_call()


FORMATS: dict[str, ToolFormat] = {
    "hermes": ToolFormat(
        name="hermes",
        program=_hermes,
        markers=(HERMES_OPEN, HERMES_CLOSE),
        trigger=HERMES_OPEN,
        begin=HERMES_OPEN + '\n{"name": "{name}", "arguments": ',
        end="}\n" + HERMES_CLOSE,
    ),
    "llama3_json": ToolFormat(
        name="llama3_json",
        program=_llama3_json,
        markers=(PYTHON_TAG,),
        trigger='{"name": "',
        begin='{"name": "{name}", "parameters": ',
        end="}",
    ),
    "mistral": ToolFormat(
        name="mistral",
        program=_mistral,
        markers=(MISTRAL_CALLS, MISTRAL_ARGS),
        trigger=MISTRAL_CALLS,
        begin=MISTRAL_CALLS + '[{"name": "{name}", "arguments": ',
        end="}]",
    ),
}
