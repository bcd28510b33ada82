"""Tool calls in generated text: the syntax our engines write, and an incremental parser.

The in-process engines write a call the way Hermes/Qwen-style chat templates teach models to::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

one block per call (parallel calls are consecutive blocks). With ``tool_choice`` ``required`` or
a named function the grammar makes the model write exactly this, with ``name`` first (so the
name can be streamed before the arguments); with ``auto`` the model may write text, blocks or
both, and :class:`ToolCallStream` separates them as the text streams: content, then each call's
start (index, id, name) and argument fragments, in OpenAI's delta order. The same parser turns a
finished text into ``message.tool_calls``, so streamed and non-streamed answers agree.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from blueprint import safejson

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
#: What a grammar-constrained call looks like around its JSON body.
CALL_PREFIX = OPEN + "\n"
CALL_SUFFIX = "\n" + CLOSE
CALL_SEPARATOR = "\n"

_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(slots=True)
class Piece:
    """One increment: ``content`` text, a call's start (``index``, ``id``, ``name``), or an
    ``arguments`` fragment of call ``index``."""

    kind: str  # "content" | "call" | "arguments"
    text: str = ""
    index: int = 0
    id: str | None = None
    name: str | None = None


@dataclass(slots=True)
class ParsedCalls:
    """A finished text split into content and calls."""

    content: str | None
    calls: list[tuple[str, str, str]]  # (id, name, arguments)
    complete: bool  # every call that was started also ended


@dataclass
class ToolCallStream:
    """Feed text as it is generated; get :class:`Piece` increments back."""

    _state: str = "text"
    _buf: str = ""
    _held_space: str = ""
    _calls: int = 0
    _open_call: bool = False
    _depth: int = 0
    _in_string: bool = False
    _escape: bool = False
    _started: bool = False
    _content_seen: bool = False
    _pieces: list[Piece] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return self._calls

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        self._pieces = []
        progressing = True
        while progressing:
            progressing = getattr(self, f"_on_{self._state}")()
        return self._pieces

    def finish(self) -> tuple[list[Piece], bool]:
        """Pieces still held, and whether every started call was finished."""
        self._pieces = []
        complete = True
        if self._state == "text":
            self._content(self._buf, final=True)
        elif self._state == "header":
            self._content(OPEN + self._buf, final=True)
        else:
            complete = self._state == "tail" and not self._open_call
            if self._state == "args":
                complete = False
        if self._held_space and not self._calls:
            self._pieces.append(Piece("content", self._held_space))
        self._buf = self._held_space = ""
        return self._pieces, complete

    # ---------------------------------------------------------------- states

    def _content(self, text: str, *, final: bool = False) -> None:
        if not text:
            return
        if not text.strip():
            self._held_space += text
            return
        lead = self._held_space
        self._held_space = ""
        body = text.rstrip() if not final else text
        tail = text[len(body):]
        self._pieces.append(Piece("content", lead + body))
        self._content_seen = True
        self._held_space = tail

    def _on_text(self) -> bool:
        at = self._buf.find(OPEN)
        if at >= 0:
            self._content(self._buf[:at])
            self._buf = self._buf[at + len(OPEN):]
            self._state = "header"
            return True
        hold = 0
        for k in range(min(len(OPEN) - 1, len(self._buf)), 0, -1):
            if self._buf.endswith(OPEN[:k]):
                hold = k
                break
        self._content(self._buf[:len(self._buf) - hold])
        self._buf = self._buf[len(self._buf) - hold:]
        return False

    def _on_header(self) -> bool:
        match = _HEADER.match(self._buf)
        if match:
            try:
                name = json.loads(f'"{match.group(1)}"')
            except ValueError:
                name = match.group(1)
            self._start_call(name)
            self._buf = self._buf[match.end():]
            self._state, self._depth = "args", 0
            self._in_string = self._escape = self._started = False
            return True
        end = self._buf.find(CLOSE)
        if end < 0:
            return False
        block, self._buf = self._buf[:end], self._buf[end + len(CLOSE):]
        self._state = "text"
        parsed = _parse_block(block)
        if parsed is None:
            self._content(OPEN + block + CLOSE)
        else:
            self._start_call(parsed[0])
            self._pieces.append(Piece("arguments", parsed[1], index=self._calls - 1))
            self._open_call = False
        return True

    def _start_call(self, name: str) -> None:
        self._held_space = ""
        self._pieces.append(Piece("call", index=self._calls, id=new_call_id(), name=name))
        self._calls += 1
        self._open_call = True

    def _on_args(self) -> bool:
        """Stream the arguments value as it comes, until that JSON value is complete."""
        skip = consumed = 0
        done = False
        for i, char in enumerate(self._buf):
            consumed = i + 1
            if not self._started:
                if char.isspace():
                    skip = consumed
                    continue
                self._started = True
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif char == "\\":
                    self._escape = True
                elif char == '"':
                    self._in_string = False
                    done = self._depth == 0
                    if done:
                        break
                continue
            if char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth <= 0:
                    done = True
                    break
            elif self._depth == 0 and (char in ",}" or char.isspace()):
                consumed -= 1
                done = True
                break
        fragment = self._buf[skip:consumed]
        if fragment:
            self._pieces.append(Piece("arguments", fragment, index=self._calls - 1))
        self._buf = self._buf[consumed:]
        if done:
            self._state = "tail"
            return True
        return False

    def _on_tail(self) -> bool:
        end = self._buf.find(CLOSE)
        if end < 0:
            return False
        self._buf = self._buf[end + len(CLOSE):]
        self._open_call = False
        self._state = "text"
        return True


def _parse_block(block: str) -> tuple[str, str] | None:
    """A call block's (name, arguments JSON) when it is a JSON object with a string ``name``."""
    try:
        data: Any = safejson.loads(block)  # model output a prompt can steer: depth-bounded
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return data["name"], text


def parse_tool_calls(text: str) -> ParsedCalls:
    """Split a finished text into content and calls (what a stream of it would have given)."""
    stream = ToolCallStream()
    pieces = stream.feed(text)
    tail, complete = stream.finish()
    content: list[str] = []
    calls: list[list[str]] = []
    for piece in [*pieces, *tail]:
        if piece.kind == "content":
            content.append(piece.text)
        elif piece.kind == "call":
            calls.append([piece.id or new_call_id(), piece.name or "", ""])
        else:
            calls[piece.index][2] += piece.text
    joined = "".join(content)
    return ParsedCalls(joined if joined or not calls else None,
                       [(c[0], c[1], c[2]) for c in calls], complete)


def render_call(name: str, arguments: Any) -> str:
    """A call block as the model would write it (assistant turns of a conversation)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return CALL_PREFIX + body + CALL_SUFFIX
