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

import re
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


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character that stands for each byte
    in a byte-level BPE vocabulary -> that byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(keep)
    extra = 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


_BYTE_LEVEL = _bytes_to_unicode()
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenPieces:
    """Token id -> (its text, its exact bytes), for logprobs; cached, so the cost per id is paid once.

    The bytes are the token's own bytes in the generated text, which OpenAI's ``bytes`` field
    exists for: a byte-level BPE token can hold half of a UTF-8 character, whose text alone is
    U+FFFD. They come from the vocabulary piece: byte-level (GPT-2/Llama-3/Qwen style) pieces map
    back through the byte alphabet, SentencePiece pieces turn ``▁`` into a space and ``<0xNN>``
    byte-fallback pieces into their byte; added and special tokens are their UTF-8 text. The
    text is those bytes decoded (U+FFFD for a partial character), which for byte-level
    vocabularies is exactly the tokenizer's decode of the id alone, special tokens included;
    for SentencePiece it keeps the leading space that decoding a lone token drops. A vocabulary
    of another kind falls back to the tokenizer's decode of the id and its UTF-8 encoding.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        state = decoder.__getstate__().decode() if decoder is not None else ""
        self._byte_level = '"ByteLevel"' in state
        self._metaspace = '"Metaspace"' in state or '"\u2581"' in state or "\\u2581" in state
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self._added = {int(i): str(getattr(t, "content", t)) for i, t in added.items()}
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        """(text, bytes) of one token id."""
        found = self._cache.get(token_id)
        if found is None:
            found = self._cache[token_id] = self._describe(token_id)
        return found

    def _describe(self, token_id: int) -> tuple[str, list[int]]:
        raw = self._piece_bytes(token_id)
        if raw is None:
            text = self._tokenizer.decode([token_id], skip_special_tokens=False,
                                          clean_up_tokenization_spaces=False)
            return text, list(text.encode("utf-8"))
        return raw.decode("utf-8", errors="replace"), list(raw)

    def _piece_bytes(self, token_id: int) -> bytes | None:
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str):
            return None
        if self._byte_level:
            try:
                return bytes(_BYTE_LEVEL[c] for c in piece)
            except KeyError:
                return None
        if self._metaspace:
            fallback = _BYTE_FALLBACK.fullmatch(piece)
            if fallback:
                return bytes([int(fallback.group(1), 16)])
            return piece.replace("\u2581", " ").encode("utf-8")
        return None
