"""Per-token log probabilities, laid out in OpenAI's two wire formats.

An engine describes each generated token once, as a :class:`TokenLogprob` (its text, its exact
bytes, its log probability and the most likely alternatives at that step); these helpers turn a
run of them into chat's ``choices[].logprobs.content`` or the legacy completions' parallel lists.
Keeping the layout here means every engine (and every chunk of a stream) formats them the same
way, and a streamed answer's logprobs concatenate to the non-streamed ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from blueprint.llm.types import ChoiceLogprobs, CompletionLogprobs

#: What OpenAI (and vLLM) report for a token the distribution excludes: ``-inf`` is not JSON.
LOGPROB_FLOOR = -9999.0


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One candidate token at a step: its text, its UTF-8 bytes, its log probability."""

    token: str
    bytes: list[int] | None
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token and the ``top`` most likely tokens of the step that produced it
    (most likely first; empty when no alternatives were asked for)."""

    token: str
    bytes: list[int] | None
    logprob: float
    top: tuple[TopLogprob, ...] = ()


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> ChoiceLogprobs:
    """Chat completions' ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``,
    ``top_logprobs`` holding exactly the alternatives asked for (``top_logprobs`` of the request)."""
    content: list[dict[str, Any]] = [
        {"token": t.token, "logprob": t.logprob, "bytes": t.bytes,
         "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": a.bytes} for a in t.top]}
        for t in tokens
    ]
    return ChoiceLogprobs(content=content)


def completion_logprobs(tokens: Sequence[TokenLogprob], *,
                        text_offset: int = 0) -> tuple[CompletionLogprobs, int]:
    """Legacy completions' ``logprobs`` for a run of tokens starting at character ``text_offset``
    of the choice's text; returns them and the offset just after the last token (where the next
    streamed chunk's run starts).

    Each ``top_logprobs`` entry maps token text to logprob: the ``logprobs`` alternatives asked
    for, plus the sampled token when it is not among them (OpenAI: "up to logprobs + 1"). Two
    tokens with the same text keep the first, likelier one. ``text_offset`` counts the characters
    of the token texts before each token, as vLLM does."""
    texts, values, tops, offsets = [], [], [], []
    offset = text_offset
    for t in tokens:
        texts.append(t.token)
        values.append(t.logprob)
        top: dict[str, float] = {}
        for alternative in t.top:
            top.setdefault(alternative.token, alternative.logprob)
        top.setdefault(t.token, t.logprob)
        tops.append(top)
        offsets.append(offset)
        offset += len(t.token)
    logprobs = CompletionLogprobs(tokens=texts, token_logprobs=values, top_logprobs=tops,
                                  text_offset=offsets)
    return logprobs, offset
