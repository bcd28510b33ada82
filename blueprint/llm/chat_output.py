"""Generated text -> an assistant message's parts: reasoning, content, tool calls.

One :class:`ChatOutputShaper` per choice turns the raw text an in-process engine generates into
OpenAI's shapes, as it streams (deltas) and at the end (the message), with the same code, so a
streamed answer and a non-streamed one say the same thing: ``<think>`` text goes to
``reasoning`` (dropped with ``reasoning.exclude``), call blocks become ``tool_calls`` (index, id
and name first, then argument fragments), and a choice that made calls and ended normally ends
with ``finish_reason: "tool_calls"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from blueprint.llm.reasoning import ReasoningSplitter
from blueprint.llm.tool_calls import Piece, ToolCallStream
from blueprint.llm.types import ChatDelta, ChatMessage, FunctionCall, ToolCall


@dataclass(slots=True)
class ShapedMessage:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)  # [id, name, arguments]

    def message(self) -> ChatMessage:
        content = "".join(self.content)
        tool_calls = [ToolCall(id=c[0], function=FunctionCall(name=c[1], arguments=c[2]))
                      for c in self.calls] or None
        return ChatMessage(role="assistant", content=content if content or not tool_calls else None,
                           tool_calls=tool_calls,
                           reasoning="".join(self.reasoning) if self.reasoning else None)


class ChatOutputShaper:
    """One choice's text in, OpenAI deltas out (module docstring)."""

    def __init__(self, *, parse_tools: bool, reasoning: bool, reasoning_open: bool = False,
                 exclude_reasoning: bool = False) -> None:
        self._tools = ToolCallStream() if parse_tools else None
        self._reasoning = ReasoningSplitter(starts_inside=reasoning_open) if reasoning else None
        self._exclude = exclude_reasoning
        self.reasoning_tokens = 0
        self.collected = ShapedMessage()

    def feed(self, text: str, tokens: int = 0) -> ChatDelta | None:
        """The delta for newly generated ``text`` (``tokens`` of them), or None if all held."""
        reasoning, content = "", text
        if self._reasoning is not None:
            if self._reasoning.thinking:
                self.reasoning_tokens += tokens
            reasoning, content = self._reasoning.feed(text)
        pieces = self._tools.feed(content) if self._tools is not None and content else None
        return self._delta(reasoning, content, pieces)

    def finish(self, finish_reason: str | None) -> tuple[ChatDelta | None, str | None]:
        """The last delta (what was held back) and the choice's finish reason."""
        reasoning = content = ""
        if self._reasoning is not None:
            reasoning, content = self._reasoning.finish()
        pieces: list[Piece] | None = None
        if self._tools is not None:
            pieces = self._tools.feed(content) if content else []
            tail, _ = self._tools.finish()
            pieces.extend(tail)
        delta = self._delta(reasoning, content, pieces)
        if finish_reason == "stop" and self.collected.calls:
            finish_reason = "tool_calls"
        return delta, finish_reason

    def _delta(self, reasoning: str, content: str, pieces: list[Piece] | None) -> ChatDelta | None:
        delta = ChatDelta()
        if reasoning and not self._exclude:
            delta.reasoning = reasoning
            self.collected.reasoning.append(reasoning)
        if pieces is None:
            if content:
                delta.content = content
                self.collected.content.append(content)
        else:
            texts: list[str] = []
            calls: list[dict[str, Any]] = []
            for piece in pieces:
                if piece.kind == "content":
                    texts.append(piece.text)
                elif piece.kind == "call":
                    self.collected.calls.append([piece.id or "", piece.name or "", ""])
                    calls.append({"index": piece.index, "id": piece.id, "type": "function",
                                  "function": {"name": piece.name, "arguments": ""}})
                else:
                    self.collected.calls[piece.index][2] += piece.text
                    calls.append({"index": piece.index, "function": {"arguments": piece.text}})
            if texts:
                delta.content = "".join(texts)
                self.collected.content.append(delta.content)
            if calls:
                delta.tool_calls = calls
        if delta.content is None and delta.reasoning is None and delta.tool_calls is None:
            return None
        return delta


def merge_deltas(first: ChatDelta | None, second: ChatDelta | None) -> ChatDelta | None:
    """Two deltas of one step as one (text joined, tool-call pieces in order)."""
    if first is None or second is None:
        return first or second
    return ChatDelta(
        content=None if first.content is None and second.content is None
        else (first.content or "") + (second.content or ""),
        reasoning=None if first.reasoning is None and second.reasoning is None
        else (first.reasoning or "") + (second.reasoning or ""),
        tool_calls=(first.tool_calls or []) + (second.tool_calls or []) or None,
    )
