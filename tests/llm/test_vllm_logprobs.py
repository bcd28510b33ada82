"""Logprobs of the in-process vLLM engine, through its pure mapping (``output_logprobs`` and
``DeltaAssembler``): vLLM has no CPU wheel and cannot be installed here, so its outputs are
stood in for by the small dataclasses below, which mirror vLLM's own types field for field
(``vllm.logprobs.Logprob`` and ``vllm.outputs.CompletionOutput``; the stand-ins are the only
fake part). Token texts and bytes come from the real tiny tokenizer; values, where they are
compared with the transformers engine, from the real tiny model."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from blueprint.errors import BackendError
from blueprint.llm.engines._hf_text import TokenPieces
from blueprint.llm.engines.transformers import TransformersClient
from blueprint.llm.engines.vllm import DeltaAssembler, output_logprobs
from blueprint.llm.logprobs import LOGPROB_FLOOR, chat_logprobs, completion_logprobs
from blueprint.llm.types import ChatCompletionRequest, CompletionRequest, parse_request

MODEL = "tiny"


@dataclass
class Logprob:
    """Mirrors ``vllm.logprobs.Logprob``."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """Mirrors ``vllm.outputs.CompletionOutput`` (``logprobs``: vLLM's ``SampleLogprobs``)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any = None


@pytest.fixture(scope="module")
def pieces(tiny_model_dir: Path) -> TokenPieces:
    return TokenPieces(AutoTokenizer.from_pretrained(tiny_model_dir))


def vllm_step(logprobs: torch.Tensor, sampled: int, k: int) -> dict[int, Logprob]:
    """One step's logprobs laid out as vLLM lays them out: the sampled token first, then the
    top ``k`` (``k + 1`` entries when the sampled token is not among them), each with its rank."""
    values, ids = logprobs.topk(k) if k else (torch.empty(0), torch.empty(0, dtype=torch.long))
    rank = int((logprobs > logprobs[sampled]).sum()) + 1
    step = {sampled: Logprob(float(logprobs[sampled]), rank, "?")}
    for position, (token, value) in enumerate(zip(ids.tolist(), values.tolist(), strict=True)):
        step.setdefault(token, Logprob(value, position + 1, "?"))
    return step


def greedy_output(engine: TransformersClient, prompt_ids: list[int], steps: int, k: int) -> CompletionOutput:
    """What vLLM would return for a greedy run of ``steps`` tokens of the tiny model: the raw
    distribution, which at temperature 0 is also the one the transformers engine reports."""
    ids = list(prompt_ids)
    token_ids, logprobs = [], []
    with torch.inference_mode():
        for _ in range(steps):
            logits = engine._model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            row = torch.log_softmax(logits, dim=-1)
            token = int(row.argmax())
            token_ids.append(token)
            logprobs.append(vllm_step(row, token, k))
            ids.append(token)
    return CompletionOutput(0, "", token_ids, None, logprobs, "length")


def chat(**overrides: object) -> ChatCompletionRequest:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "Café, 日本語 🙂"}],
                               "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 5}
    body.update(overrides)
    return parse_request(ChatCompletionRequest, body)


# ------------------------------------------------------------------ against the transformers engine


async def test_chat_logprobs_match_the_transformers_engine(engine: TransformersClient) -> None:
    request = chat()
    answer = await engine.chat(request)
    expected = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    output = greedy_output(engine, engine._encode_chat(request.messages), answer.usage.completion_tokens, 5)
    tokens = output_logprobs(output, TokenPieces(engine._encoder), 5)
    assert tokens is not None
    got = chat_logprobs(tokens).content
    assert got is not None and len(got) == len(expected) == answer.usage.completion_tokens
    for mine, theirs in zip(got, expected, strict=True):
        assert (mine["token"], mine["bytes"]) == (theirs["token"], theirs["bytes"])
        assert mine["logprob"] == pytest.approx(theirs["logprob"], abs=1e-4)
        assert [(a["token"], a["bytes"]) for a in mine["top_logprobs"]] == \
            [(a["token"], a["bytes"]) for a in theirs["top_logprobs"]]
        assert [a["logprob"] for a in mine["top_logprobs"]] == \
            pytest.approx([a["logprob"] for a in theirs["top_logprobs"]], abs=1e-4)


async def test_completion_logprobs_match_the_transformers_engine(engine: TransformersClient) -> None:
    request = parse_request(CompletionRequest, {"model": MODEL, "prompt": "The quick brown fox",
                                                "max_tokens": 8, "temperature": 0, "logprobs": 3})
    answer = await engine.complete(request)
    expected = answer.choices[0].logprobs
    assert expected is not None
    (prompt_ids,) = engine._encode_texts(["The quick brown fox"])
    output = greedy_output(engine, prompt_ids, answer.usage.completion_tokens, 3)
    tokens = output_logprobs(output, TokenPieces(engine._encoder), 3)
    assert tokens is not None
    got, end = completion_logprobs(tokens)
    assert got.tokens == expected.tokens and got.text_offset == expected.text_offset
    assert end == sum(len(t) for t in got.tokens)
    assert got.token_logprobs == pytest.approx(expected.token_logprobs, abs=1e-4)
    assert [list(top) for top in got.top_logprobs or []] == [list(top) for top in expected.top_logprobs or []]


# ------------------------------------------------------------------ the mapping itself


def step_with(pieces: TokenPieces, sampled: int, sampled_rank: int, sampled_value: float,
              top: list[tuple[int, float]]) -> dict[int, Logprob]:
    """A vLLM step dict: the sampled token first, then the top-k in vLLM's rank order."""
    step = {sampled: Logprob(sampled_value, sampled_rank, pieces.get(sampled)[0])}
    for rank, (token, value) in enumerate(top, start=1):
        step.setdefault(token, Logprob(value, rank, pieces.get(token)[0]))
    return step


def test_alternatives_are_the_top_n_most_likely_first(pieces: TokenPieces) -> None:
    top = [(10, -0.5), (11, -1.0), (12, -1.5)]
    outside = step_with(pieces, 40, 9, -4.0, top)  # sampled token not among the top 3
    inside = step_with(pieces, 11, 2, -1.0, top)  # sampled token among them
    # Entries in a shuffled order: the mapping must sort, not trust the dict's order.
    shuffled = dict(reversed(list(outside.items())))
    output = CompletionOutput(0, "", [40, 11, 40], None, [outside, inside, shuffled])
    tokens = output_logprobs(output, pieces, 3)
    assert tokens is not None and len(tokens) == 3
    for token in tokens:
        values = [a.logprob for a in token.top]
        assert values == sorted(values, reverse=True) and len(values) == 3
    assert [a.token for a in tokens[0].top] == [pieces.get(i)[0] for i in (10, 11, 12)]
    assert tokens[0].top == tokens[2].top
    assert (tokens[0].token, tokens[0].bytes, tokens[0].logprob) == (*pieces.get(40), -4.0)
    assert (tokens[1].token, tokens[1].logprob) == (pieces.get(11)[0], -1.0)
    # Fewer asked for than vLLM holds: the likeliest ones; none asked for: the sampled token's only.
    assert [a.token for a in output_logprobs(output, pieces, 2)[0].top] == \
        [pieces.get(i)[0] for i in (10, 11)]  # type: ignore[index]
    assert all(t.top == () for t in output_logprobs(output, pieces, 0) or [])

    chat = chat_logprobs(tokens).content
    assert chat is not None
    assert [e["token"] for e in chat] == [pieces.get(i)[0] for i in (40, 11, 40)]
    assert pieces.get(40)[0] not in [a["token"] for a in chat[0]["top_logprobs"]]
    legacy, _ = completion_logprobs(tokens)
    assert legacy.top_logprobs is not None
    assert len(legacy.top_logprobs[0]) == 4 and legacy.top_logprobs[0][pieces.get(40)[0]] == -4.0  # k + 1
    assert len(legacy.top_logprobs[1]) == 3  # the sampled token is one of the k


def test_a_sampled_token_tied_with_the_last_alternative_stays_out(pieces: TokenPieces) -> None:
    """vLLM ranks the sampled token by how many tokens are at least as likely, so a tie with the
    k-th gives it rank k + 1: it must not displace the k-th (here it even has the smaller id)."""
    step = step_with(pieces, 5, 4, -1.5, [(10, -0.5), (11, -1.0), (12, -1.5)])
    (token,) = output_logprobs(CompletionOutput(0, "", [5], None, [step]), pieces, 3) or []
    assert [a.token for a in token.top] == [pieces.get(i)[0] for i in (10, 11, 12)]


def test_bytes_come_from_the_token_ids_not_decoded_token(pieces: TokenPieces, tiny_model_dir: Path) -> None:
    """vLLM's ``decoded_token`` is None without detokenization and U+FFFD for part of a
    character; the bytes must still be the token's own, rebuilding the text exactly."""
    text = "Café, 日本語のテキスト 🙂🚀"
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)(text, add_special_tokens=False).input_ids
    partial = [i for i in ids if "\ufffd" in pieces.get(i)[0]]
    assert partial  # the sample really splits a character across tokens
    steps = [{i: Logprob(-0.25, 1, None if n % 2 else "\ufffd")} for n, i in enumerate(ids)]
    tokens = output_logprobs(CompletionOutput(0, text, ids, None, steps), pieces, 0)
    assert tokens is not None
    assert b"".join(bytes(t.bytes or []) for t in tokens) == text.encode("utf-8")
    assert [(t.token, t.bytes) for t in tokens] == [pieces.get(i) for i in ids]


def test_minus_infinity_is_floored(pieces: TokenPieces) -> None:
    step = {5: Logprob(float("-inf"), 1000), 6: Logprob(-0.1, 1)}
    (token,) = output_logprobs(CompletionOutput(0, "", [5], None, [step]), pieces, 1) or []
    assert token.logprob == LOGPROB_FLOOR and [a.logprob for a in token.top] == [-0.1]


def test_no_logprobs_asked_gives_none_and_inconsistent_answers_are_errors(pieces: TokenPieces) -> None:
    with pytest.raises(BackendError, match="no logprobs"):
        output_logprobs(CompletionOutput(0, "hi", [5, 6], None, None), pieces, 2)
    assert output_logprobs(CompletionOutput(0, "", [], None, None), pieces, 2) is None
    assert output_logprobs(CompletionOutput(0, "", [], None, []), pieces, 2) == []
    with pytest.raises(BackendError, match="steps"):
        output_logprobs(CompletionOutput(0, "hi", [5, 6], None, [{5: Logprob(-0.1, 1)}]), pieces, 0)
    with pytest.raises(BackendError, match="sampled token 6"):
        output_logprobs(CompletionOutput(0, "hi", [6], None, [{5: Logprob(-0.1, 1)}]), pieces, 1)


# ------------------------------------------------------------------ streaming (DELTA outputs)


def full_output(pieces: TokenPieces, tiny_model_dir: Path, index: int = 0) -> CompletionOutput:
    """A finished output of real tokens (some holding half a character) with vLLM-shaped steps."""
    text = "日本語 🙂 and more"
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)(text, add_special_tokens=False).input_ids
    steps = [step_with(pieces, i, 1 + n % 3, -0.1 * (n + 1), [(7 + n, -0.05), (8 + n, -0.2), (9 + n, -0.3)])
             for n, i in enumerate(ids)]
    return CompletionOutput(index, text, ids, None, steps, "length")


def deltas(output: CompletionOutput, cuts: list[int]) -> list[CompletionOutput]:
    """``output`` cut at ``cuts`` as vLLM's DELTA kind reports it: per step only the new ids and
    their logprobs (texts are added by :func:`with_texts`), the finish reason on the last step."""
    bounds = [0, *cuts, len(output.token_ids)]
    return [replace(output, token_ids=output.token_ids[start:end], text="",
                    logprobs=None if output.logprobs is None else output.logprobs[start:end],
                    finish_reason=output.finish_reason if end == bounds[-1] else None)
            for start, end in itertools.pairwise(bounds)]


def with_texts(parts: list[CompletionOutput], pieces: TokenPieces) -> list[CompletionOutput]:
    """Give each delta the text it completes: the bytes of all tokens so far, decoded, minus
    what was already sent, held back while they end in a split character (as vLLM does)."""
    sent, data, result = "", b"", []
    for n, part in enumerate(parts):
        data += b"".join(bytes(pieces.get(i)[1]) for i in part.token_ids)
        decoded = data.decode("utf-8", errors="replace")
        if decoded.endswith("\ufffd") and n < len(parts) - 1:
            result.append(part)
            continue
        result.append(replace(part, text=decoded[len(sent):]))
        sent = decoded
    return result


def test_streamed_logprobs_concatenate_to_the_whole(pieces: TokenPieces, tiny_model_dir: Path) -> None:
    whole = full_output(pieces, tiny_model_dir)
    expected = output_logprobs(whole, pieces, 3)
    assert expected is not None
    parts = with_texts(deltas(whole, list(range(1, len(whole.token_ids)))), pieces)  # one token a step
    assert any(not p.text for p in parts)  # some steps add no text: their logprobs must wait
    assembler = DeltaAssembler(pieces, 3)
    sent = [piece for piece in map(assembler.push, parts) if piece is not None]
    assert len(sent) < len(parts)
    assert [p.first for p in sent] == [True] + [False] * (len(sent) - 1)
    assert "".join(p.text for p in sent) == whole.text
    assert sent[-1].finish_reason == "length" and all(p.finish_reason is None for p in sent[:-1])
    streamed = [t for p in sent for t in p.logprobs or []]
    assert streamed == expected and assembler.produced == len(whole.token_ids)
    assert all(p.logprobs for p in sent)  # every chunk carries the tokens behind its text

    # In both wire formats the chunks concatenate to the non-streamed answer.
    assert [e for p in sent for e in chat_logprobs(p.logprobs or []).content or []] == \
        chat_logprobs(expected).content
    legacy, offset = [], 0
    for p in sent:
        chunk, offset = completion_logprobs(p.logprobs or [], text_offset=offset)
        legacy.append(chunk)
    one = completion_logprobs(expected)[0]
    assert [t for c in legacy for t in c.tokens] == one.tokens
    assert [o for c in legacy for o in c.text_offset] == one.text_offset
    assert [t for c in legacy for t in c.top_logprobs or []] == one.top_logprobs


def test_interleaved_choices_keep_their_own_logprobs(pieces: TokenPieces, tiny_model_dir: Path) -> None:
    a, b = full_output(pieces, tiny_model_dir, 0), full_output(pieces, tiny_model_dir, 1)
    parts_a = with_texts(deltas(a, [2, 3, 5]), pieces)
    parts_b = with_texts(deltas(b, [1, 4]), pieces)
    order = [x for pair in zip(parts_a, parts_b, strict=False) for x in pair] + parts_a[len(parts_b):]
    assembler = DeltaAssembler(pieces, 2)
    sent = [piece for piece in map(assembler.push, order) if piece is not None]
    for output in (a, b):
        mine = [p for p in sent if p.index == output.index]
        assert mine[0].first and not any(p.first for p in mine[1:])
        assert [t for p in mine for t in p.logprobs or []] == output_logprobs(output, pieces, 2)
    assert assembler.produced == len(a.token_ids) + len(b.token_ids)


def test_a_stream_without_logprobs_carries_none(pieces: TokenPieces, tiny_model_dir: Path) -> None:
    whole = replace(full_output(pieces, tiny_model_dir), logprobs=None)
    assembler = DeltaAssembler(None, None)
    sent = [p for p in map(assembler.push, with_texts(deltas(whole, [2, 4]), pieces)) if p is not None]
    assert sent and all(p.logprobs is None for p in sent)
    assert "".join(p.text for p in sent) == whole.text
