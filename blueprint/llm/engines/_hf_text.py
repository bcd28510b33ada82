"""Token ids -> streamed text: incremental detokenization and text-level stop sequences.

Decoding one token at a time is wrong for byte-level BPE (a token may hold half of a UTF-8
character) and for SentencePiece (a token's leading space depends on what precedes it). The
detokenizer therefore decodes a short window of recent tokens and emits only the text that the
newest token *added*, holding back output while the window ends in an incomplete character.

Stop sequences are matched on text, not tokens (a stop string may span tokens, or end in the
middle of one). Text that could still be the start of a stop sequence is held back until the next
token decides; the matched stop string and anything after it are never emitted.
"""

from __future__ import annotations

from typing import Any

_REPLACEMENT = "\ufffd"
#: Prompt tokens used as decoding context for the first generated tokens.
_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    """Feeds token ids, returns the text each one adds (possibly "" while a character is split)."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip,
                                      clean_up_tokenization_spaces=False)

    def stage(self, token_id: int) -> tuple[list[int], list[int]]:
        """Add a token; returns the two id windows to decode (the batcher decodes every row's
        windows in one call), to be handed back to :meth:`accept`."""
        self._ids.append(token_id)
        return self._ids[self._prefix_offset:self._read_offset], self._ids[self._prefix_offset:]

    def accept(self, prefix_text: str, full_text: str) -> str:
        """The text the staged token added, given the decoded windows of :meth:`stage`."""
        if len(full_text) > len(prefix_text) and not full_text.endswith(_REPLACEMENT):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return full_text[len(prefix_text):]
        return ""

    def push(self, token_id: int) -> str:
        prefix_ids, full_ids = self.stage(token_id)
        return self.accept(self._decode(prefix_ids), self._decode(full_ids))

    def flush(self) -> str:
        """Whatever is still held (an incomplete character decodes to U+FFFD, as a full decode would)."""
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset:])
        self._prefix_offset = self._read_offset = len(self._ids)
        return full_text[len(prefix_text):] if len(full_text) > len(prefix_text) else ""


class StopMatcher:
    """Holds back text that may begin a stop sequence; reports when one is complete."""

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop sequence was hit)."""
        if not self._stops:
            return text, False
        pending = self._pending + text
        hits = [i for i in (pending.find(stop) for stop in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return pending[:min(hits)], True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(pending)), hold, -1):
                if pending.endswith(stop[:k]):
                    hold = k
                    break
        self._pending = pending[len(pending) - hold:] if hold else ""
        return (pending[:len(pending) - hold] if hold else pending), False

    def flush(self) -> str:
        """At the end of generation the held text was not a stop after all."""
        out, self._pending = self._pending, ""
        return out


class TextAssembler:
    """Detokenizer + stop matcher: one per generated sequence."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stops: tuple[str, ...]) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self._stops = StopMatcher(stops)

    def push(self, token_id: int) -> tuple[str, bool]:
        return self._stops.push(self._detok.push(token_id))

    def stage(self, token_id: int) -> tuple[list[int], list[int]]:
        return self._detok.stage(token_id)

    def accept(self, prefix_text: str, full_text: str) -> tuple[str, bool]:
        """(text safe to emit, stop hit) for the staged token, from its decoded windows."""
        return self._stops.push(self._detok.accept(prefix_text, full_text))

    def finish(self) -> tuple[str, bool]:
        """Text still held when generation ends for another reason; a stop sequence may still
        complete in it (then the flag is True and the text ends before it)."""
        tail, stopped = self._stops.push(self._detok.flush())
        return (tail, True) if stopped else (tail + self._stops.flush(), False)


def decode_windows(tokenizer: Any, windows: list[list[int]]) -> list[str]:
    """Decode many id lists (special tokens skipped, no clean-up of spaces, as
    ``IncrementalDetokenizer`` decodes). A fast tokenizer's Rust ``decode`` is called directly,
    skipping the Python wrapper; not ``decode_batch``, whose thread pool fights torch's threads
    for the CPU and turned out 50x slower inside the decode loop."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [backend.decode(w, skip_special_tokens=True) for w in windows]
    return [tokenizer.decode(w, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            for w in windows]
