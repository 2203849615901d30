"""Incremental parsing of a choice's text into content and tool calls, one character at a time.

A format (``workers.tools.formats``) is written as a generator program over a :class:`Reader`: it
asks for characters (``c = yield from reader.char()``), finds markers in free text
(:meth:`Reader.until`), reads JSON (:meth:`Reader.call_object`) and tells the reader what it
found (content, a call's name, argument text). The program never sees where one piece of text ends
and the next begins, so the result is the same however the text is split: a whole text at once
(non-streaming), token by token, or byte by byte.

What streaming needs is built in: text that may start a marker is held back until it is known not
to; a call is announced once its name is complete (arguments written before the name wait for it);
its arguments go out as they are written, exactly as the model wrote them, so the fragments join
into the non-streamed arguments. Whitespace next to a call is not content. Text that breaks the
format before a call's name is known is content; after it, the call ends there (its arguments as
written) and the text goes on as content.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.tools import FunctionCall, ToolCall, ToolCallDelta

#: A format program: a generator fed one character at a time (None: the text ended).
Chars = Generator[None, str | None, Any]
Program = Callable[["Reader"], Chars]

_WHITESPACE = " \t\r\n"
_PRIMITIVE = set("-+0123456789.eEtrufalsn")
_CLOSING = {"{": "}", "[": "]"}


class Broken(Exception):
    """The text does not follow the format at ``char`` (None: it ended)."""

    def __init__(self, char: str | None) -> None:
        super().__init__(char)
        self.char = char


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class Reader:
    """One choice's parse: feeds the program, collects its content and calls."""

    def __init__(self, program: Program) -> None:
        self._program = program(self)
        self._back: str | None = None
        self._raw: list[str] | None = None
        self._mark = 0
        self._content: list[str] = []
        self._deltas: list[ToolCallDelta] = []
        self._calls: list[_Call] = []
        self._open: _Call | None = None
        #: Arguments read before the call's name.
        self._early: list[str] = []
        self._blank = ""  # whitespace held until something follows it
        self._after_call = False
        self._ended = False
        next(self._program)

    # -- driving --------------------------------------------------------------------------------

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """Parse more text: the content and call fragments it releases."""
        for char in text:
            self._send(char)
        return self._take()

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """The text ended: what was held back (an unfinished call ends as it is)."""
        if not self._ended:
            self._send(None)
        if self._open is not None:
            self.end_call()
        if not self._calls:
            self._content.append(self._blank)
        self._blank = ""
        return self._take()

    @property
    def calls(self) -> list[ToolCall]:
        """The calls found so far, in order."""
        return [
            ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments="".join(c.arguments)))
            for c in self._calls
        ]

    def _send(self, char: str | None) -> None:
        if self._ended:
            return
        try:
            self._program.send(char)
        except StopIteration:
            self._ended = True

    def _take(self) -> tuple[str, list[ToolCallDelta]]:
        content, deltas = "".join(self._content), self._deltas
        self._content, self._deltas = [], []
        return content, deltas

    # -- what a program tells ---------------------------------------------------------------------

    def content(self, text: str) -> None:
        """Free text; whitespace waits for what follows (none of it is kept next to a call)."""
        body = text.rstrip(_WHITESPACE)
        if body:
            if not self._after_call:
                self._content.append(self._blank)
            self._content.append(body)
            self._blank, self._after_call = "", False
            text = text[len(body) :]
        self._blank += text

    def start_call(self, name: str) -> None:
        """A call's name is complete: announce it, with the arguments read before it."""
        call = _Call(new_call_id(), name)
        self._calls.append(call)
        self._open, self._blank = call, ""
        self._deltas.append(ToolCallDelta(index=len(self._calls) - 1, id=call.id, name=name))
        early, self._early = "".join(self._early), []
        self.arguments(early)

    def arguments(self, text: str) -> None:
        """More argument text of the open call (kept for its name while there is none)."""
        if not text:
            return
        call = self._open
        if call is None:
            self._early.append(text)
            return
        call.arguments.append(text)
        last = self._deltas[-1] if self._deltas else None
        index = len(self._calls) - 1
        if last is not None and last.index == index:
            last.arguments += text
        else:
            self._deltas.append(ToolCallDelta(index=index, arguments=text))

    def end_call(self) -> None:
        """The open call is complete; a call without arguments gets ``{}``."""
        call = self._open
        if call is not None and not call.arguments:
            self.arguments("{}")
        self._open, self._early, self._after_call = None, [], True

    # -- reading --------------------------------------------------------------------------------

    def char(self) -> Chars:
        """The next character; raises :class:`Broken` (None) at the end of the text."""
        if self._back is not None:
            char, self._back = self._back, None
        else:
            char = yield
        if char is None:
            raise Broken(None)
        if self._raw is not None:
            self._raw.append(char)
        return char

    def push_back(self, char: str) -> None:
        """Read ``char`` again next (the program looked one character too far)."""
        self._back = char
        if self._raw:
            self._raw.pop()

    def record(self) -> None:
        """A call segment starts: keep the characters read from now on (:meth:`recover` gives them
        back as content if no call starts in it)."""
        self._raw, self._mark = [], len(self._calls)

    def recover(self, broken: Broken, opening: str) -> bool:
        """After ``broken``, in a call segment that began with ``opening``: what was read is
        content if no call started in it (else the call ends), and the offending character is read
        again. False at the end of the text."""
        raw, self._raw = self._raw or [], None
        if broken.char is not None:
            raw.pop()
            self._back = broken.char
        if len(self._calls) > self._mark:
            if self._open is not None:
                self.end_call()
        else:
            self.content(opening + "".join(raw))
            self._early = []
        return broken.char is not None

    def settle(self) -> None:
        """A call segment ended well: stop recording."""
        self._raw = None

    def until(self, markers: Sequence[str]) -> Chars:
        """Read free text (as content) up to one of ``markers``: the marker, or None at the end.

        Text that may be the start of a marker is held back until the next characters tell.
        """
        pending = ""
        while True:
            try:
                char = yield from self.char()
            except Broken:
                self.content(pending)
                return None
            pending += char
            for marker in markers:
                if pending.endswith(marker):
                    self.content(pending[: -len(marker)])
                    return marker
            hold = max((_overlap(pending, marker) for marker in markers), default=0)
            if hold < len(pending):
                self.content(pending[: len(pending) - hold])
                pending = pending[len(pending) - hold :]

    def skip_blank(self, char: str | None = None) -> Chars:
        """The first character that is not whitespace (from ``char`` on, if given)."""
        if char is None:
            char = yield from self.char()
        while char in _WHITESPACE:
            char = yield from self.char()
        return char

    def expect(self, literal: str, char: str | None = None) -> Chars:
        """Read exactly ``literal`` (its first character may be given); :class:`Broken` if not."""
        for i, wanted in enumerate(literal):
            got = char if i == 0 and char is not None else (yield from self.char())
            if got != wanted:
                raise Broken(got)

    def string_body(self, sink: Callable[[str], None] | None = None) -> Chars:
        """After an opening quote: the string's raw text up to the closing quote, which is read."""
        raw: list[str] = []
        escaped = False
        while True:
            char = yield from self.char()
            if sink is not None:
                sink(char)
            if char == '"' and not escaped:
                return "".join(raw)
            raw.append(char)
            escaped = char == "\\" and not escaped

    def value(self, first: str, sink: Callable[[str], None]) -> Chars:
        """A JSON value starting with ``first``, each character to ``sink``.

        Returns the character after a number or literal (read to see where it ends), else None.
        """
        if first == '"':
            sink(first)
            yield from self.string_body(sink)
            return None
        if first in _CLOSING:
            sink(first)
            closers = [_CLOSING[first]]
            while closers:
                char = yield from self.char()
                if char in "]}" and char != closers.pop():
                    raise Broken(char)
                sink(char)
                if char == '"':
                    yield from self.string_body(sink)
                elif char in _CLOSING:
                    closers.append(_CLOSING[char])
            return None
        if first not in _PRIMITIVE:
            raise Broken(first)
        char = first
        while char in _PRIMITIVE:
            sink(char)
            char = yield from self.char()
        return char

    def call_object(self, names: Sequence[str], arguments: Sequence[str], first: str | None = None) -> Chars:
        """A call as a JSON object: its name under one of ``names``, its arguments (an object, or
        JSON text in a string) under one of ``arguments``; other keys are skipped."""
        char = yield from self.skip_blank(first)
        if char != "{":
            raise Broken(char)
        named = argued = False
        char = yield from self.skip_blank()
        while char != "}":
            if char != '"':
                raise Broken(char)
            key = yield from self.string_body()
            char = yield from self.skip_blank()
            if char != ":":
                raise Broken(char)
            char = yield from self.skip_blank()
            after: str | None = None
            if key in names and not named and char == '"':
                self.start_call(_decoded((yield from self.string_body())))
                named = True
            elif key in arguments and not argued and char == '"':
                raw = yield from self.string_body()  # arguments as JSON text: sent once, decoded
                self.arguments(_decoded(raw))
                argued = True
            elif key in arguments and not argued:
                after = yield from self.value(char, self.arguments)
                argued = True
            else:
                after = yield from self.value(char, _ignore)
            char = yield from self.skip_blank(after)
            if char == ",":
                char = yield from self.skip_blank()
            elif char != "}":
                raise Broken(char)
        if not named:
            raise Broken("}")
        self.end_call()


def _decoded(raw: str) -> str:
    """A JSON string's text from its raw body (its closing quote was the last character read)."""
    try:
        return json.loads(f'"{raw}"', strict=False)
    except ValueError:
        raise Broken('"') from None


def _ignore(_: str) -> None:
    pass


def _overlap(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
