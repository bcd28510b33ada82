"""Reasoning written in ``<think>...</think>`` tags, split from the answer as it streams.

Models such as DeepSeek-R1 and Qwen3 think before they answer, inside tags; OpenRouter wants that
text in ``message.reasoning`` / ``delta.reasoning`` and the answer alone in ``content``. Some
templates open the tag in the prompt already (the generation prompt ends with ``<think>``), so
the splitter can start inside the reasoning.
"""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"


class ReasoningSplitter:
    """Feed generated text; get (reasoning, content) increments back."""

    def __init__(self, *, starts_inside: bool = False) -> None:
        self._state = "thinking" if starts_inside else "start"
        self._buf = ""

    @property
    def thinking(self) -> bool:
        return self._state in ("start", "thinking")

    def feed(self, text: str) -> tuple[str, str]:
        self._buf += text
        if self._state == "start":
            stripped = self._buf.lstrip()
            if not stripped or OPEN.startswith(stripped):
                return "", ""  # still undecided
            if stripped.startswith(OPEN):
                self._state, self._buf = "thinking", stripped[len(OPEN):]
            else:
                self._state = "content"
        if self._state == "content":
            out, self._buf = self._buf, ""
            return "", out
        at = self._buf.find(CLOSE)
        if at >= 0:
            reasoning, rest = self._buf[:at], self._buf[at + len(CLOSE):]
            self._state, self._buf = "content", ""
            return reasoning, rest.lstrip("\n") if rest.strip() else ""
        hold = 0
        for k in range(min(len(CLOSE) - 1, len(self._buf)), 0, -1):
            if self._buf.endswith(CLOSE[:k]):
                hold = k
                break
        out, self._buf = self._buf[:len(self._buf) - hold], self._buf[len(self._buf) - hold:]
        return out, ""

    def finish(self) -> tuple[str, str]:
        """What is still held: reasoning if the tag never closed, else content."""
        held, self._buf = self._buf, ""
        if self._state == "thinking":
            return held, ""
        return "", held
