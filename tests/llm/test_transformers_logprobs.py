"""Logprobs of the transformers engine, on the real tiny model loaded through the real code:
their shape, their values against a direct forward pass, streamed against non-streamed, and
that they cost nothing when no request asks for them."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import torch

from blueprint.errors import InvalidRequestError
from blueprint.llm.engines._hf_batching import Sequence, sample_step
from blueprint.llm.engines._hf_text import TokenPieces
from blueprint.llm.engines.transformers import TransformersClient
from blueprint.llm.logprobs import completion_logprobs
from blueprint.llm.sampling import SamplingParams
from blueprint.llm.types import ChatCompletionRequest, CompletionRequest, parse_request

MODEL = "tiny"
PROMPT = [{"role": "user", "content": "Café, 日本語 and 🙂: tell me more"}]


def chat(**overrides: object) -> ChatCompletionRequest:
    body: dict[str, object] = {"model": MODEL, "messages": PROMPT, "max_tokens": 10, "temperature": 0,
                               "logprobs": True, "top_logprobs": 5}
    body.update(overrides)
    return parse_request(ChatCompletionRequest, body)


def completion(**overrides: object) -> CompletionRequest:
    body: dict[str, object] = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 8,
                               "temperature": 0, "logprobs": 3}
    body.update(overrides)
    return parse_request(CompletionRequest, body)


def special_tokens(engine: TransformersClient) -> set[str]:
    return {str(t.content) for t in engine._encoder.added_tokens_decoder.values()}


# ------------------------------------------------------------------ chat


async def test_chat_logprobs_shape_values_and_greedy_top(engine: TransformersClient) -> None:
    answer = await engine.chat(chat())
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert len(content) == answer.usage.completion_tokens  # one entry per generated token
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["logprob"] <= 0.0
        top = entry["top_logprobs"]
        assert len(top) == 5
        values = [alt["logprob"] for alt in top]
        assert values == sorted(values, reverse=True) and all(v <= 0.0 for v in values)
        # Greedy: the sampled token is the most likely one.
        assert (top[0]["token"], top[0]["bytes"]) == (entry["token"], entry["bytes"])
        assert top[0]["logprob"] == pytest.approx(entry["logprob"], abs=1e-6)


async def test_first_token_logprobs_match_a_direct_forward_pass(engine: TransformersClient) -> None:
    request = chat(max_tokens=1, top_logprobs=20)
    answer = await engine.chat(request)
    (entry,) = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    ids = torch.tensor([engine._encode_chat(request.messages)], device=engine._model.device)
    with torch.inference_mode():
        expected = torch.log_softmax(engine._model(input_ids=ids).logits[0, -1].float(), dim=-1)
    values, top_ids = expected.topk(20)
    pieces = TokenPieces(engine._encoder)
    assert [alt["token"] for alt in entry["top_logprobs"]] == [pieces.get(i)[0] for i in top_ids.tolist()]
    assert [alt["logprob"] for alt in entry["top_logprobs"]] == pytest.approx(values.tolist(), abs=1e-4)
    assert entry["logprob"] == pytest.approx(float(values[0]), abs=1e-4)


async def test_token_bytes_rebuild_the_text(engine: TransformersClient) -> None:
    """The bytes are the tokens' own bytes: joined (special tokens aside, which the text skips)
    they decode to the answer even where a token holds part of a multi-byte character."""
    special = special_tokens(engine)
    for seed in range(6):
        answer = await engine.chat(chat(temperature=1.0, seed=seed, max_tokens=24, top_logprobs=None))
        content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
        assert all(entry["top_logprobs"] == [] for entry in content)
        data = b"".join(bytes(e["bytes"]) for e in content if e["token"] not in special)
        assert data.decode("utf-8", errors="replace") == answer.choices[0].message.content


async def test_chat_stream_gives_the_same_logprobs(engine: TransformersClient) -> None:
    whole = await engine.chat(chat(max_tokens=12))
    chunks = [c async for c in engine.chat_stream(chat(max_tokens=12, stream=True))]
    streamed = [entry for c in chunks for choice in c.choices if choice.logprobs is not None
                for entry in choice.logprobs.content or []]
    expected = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert len(streamed) == len(expected) > 0
    for got, want in zip(streamed, expected, strict=True):
        assert (got["token"], got["bytes"]) == (want["token"], want["bytes"])
        assert got["logprob"] == pytest.approx(want["logprob"], abs=1e-5)
        assert [a["token"] for a in got["top_logprobs"]] == [a["token"] for a in want["top_logprobs"]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


async def test_asking_for_logprobs_does_not_change_the_sampled_text(engine: TransformersClient) -> None:
    plain = chat(temperature=0.9, seed=11, max_tokens=16, logprobs=False, top_logprobs=None)
    with_lp = chat(temperature=0.9, seed=11, max_tokens=16, top_logprobs=3)
    # Batched together, one row with logprobs and one without.
    a, b = await asyncio.gather(engine.chat(plain), engine.chat(with_lp))
    assert a.choices[0].logprobs is None
    assert a.choices[0].message.content == b.choices[0].message.content
    assert len(b.choices[0].logprobs.content) == b.usage.completion_tokens  # type: ignore[union-attr]


async def test_n_choices_each_get_their_own_logprobs(engine: TransformersClient) -> None:
    answer = await engine.chat(chat(n=3, temperature=1.0, seed=5, max_tokens=6))
    lengths = [len(c.logprobs.content) for c in answer.choices]  # type: ignore[union-attr]
    assert sum(lengths) == answer.usage.completion_tokens and all(lengths)


async def test_logprob_requests_that_cannot_be_honoured_are_refused(engine: TransformersClient) -> None:
    with pytest.raises(InvalidRequestError):
        await engine.chat(chat(logprobs=False, top_logprobs=3))
    with pytest.raises(InvalidRequestError):
        chat(top_logprobs=21)
    with pytest.raises(InvalidRequestError):
        await engine.complete(completion(echo=True))
    with pytest.raises(InvalidRequestError):
        completion(logprobs=6)


def test_models_advertise_logprobs(engine: TransformersClient) -> None:
    (info,) = engine.models()
    assert "logprobs" in info.supported_features
    assert {"logprobs", "top_logprobs"} <= set(info.supported_sampling_parameters)
    assert engine.capabilities().logprobs is True


# ------------------------------------------------------------------ legacy completions


async def test_completion_logprobs_shape(engine: TransformersClient) -> None:
    answer = await engine.complete(completion())
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.top_logprobs is not None
    count = answer.usage.completion_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == count
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(count)]
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs,
                                 strict=True):
        assert value is not None and value <= 0.0
        assert top is not None and token in top and 1 <= len(top) <= 4  # logprobs + the sampled one
        assert top[token] == pytest.approx(value) and max(top.values()) == pytest.approx(value)


async def test_completion_logprobs_zero_gives_the_sampled_token_only(engine: TransformersClient) -> None:
    answer = await engine.complete(completion(logprobs=0, max_tokens=4))
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.top_logprobs is not None
    assert [list(top) for top in logprobs.top_logprobs] == [[t] for t in logprobs.tokens]  # type: ignore[union-attr]


async def test_completion_stream_gives_the_same_logprobs(engine: TransformersClient) -> None:
    request = completion(prompt=["The quick brown fox", "Hello, world"], max_tokens=10)
    whole = await engine.complete(request)
    chunks = [c async for c in engine.complete_stream(request.model_copy(update={"stream": True}))]
    for choice in whole.choices:
        pieces = [c.choices[0].logprobs for c in chunks
                  if c.choices and c.choices[0].index == choice.index and c.choices[0].logprobs]
        assert choice.logprobs is not None
        assert [t for p in pieces for t in p.tokens] == choice.logprobs.tokens
        assert [v for p in pieces for v in p.token_logprobs] == pytest.approx(choice.logprobs.token_logprobs,
                                                                             abs=1e-5)
        assert [o for p in pieces for o in p.text_offset] == choice.logprobs.text_offset
        assert [list(t) for p in pieces for t in p.top_logprobs or []] == \
            [list(t) for t in choice.logprobs.top_logprobs or []]  # type: ignore[arg-type]


# ------------------------------------------------------------------ the batching step itself


def _seq(logprobs: int | None, device: torch.device | str = "cpu", **params: Any) -> Sequence:
    seq = Sequence(0, [0], 10, SamplingParams(**params), lambda _event: None, logprobs=logprobs)
    seq.generator = torch.Generator(device=device).manual_seed(int(params.get("seed", 0) or 0))
    return seq


def test_a_step_over_the_real_model_sums_to_one(engine: TransformersClient) -> None:
    ids = torch.tensor([engine._encode_chat(chat().messages)], device=engine._model.device)
    with torch.inference_mode():
        logits = engine._model(input_ids=ids).logits[:, -1, :]
    vocab = logits.shape[-1]
    for params in ({"temperature": 0.0}, {"temperature": 0.7, "seed": 3},
                   {"temperature": 1.3, "top_k": 5, "seed": 4, "logit_bias": {7: 5.0}}):
        tokens, (raw,) = sample_step(logits, [_seq(vocab, logits.device, **params)])
        assert raw is not None
        chosen, top_ids, top_values = raw
        assert len(top_ids) == vocab and sorted(top_ids) == list(range(vocab))
        assert math.fsum(math.exp(v) for v in top_values) == pytest.approx(1.0, abs=1e-4)
        assert top_values == sorted(top_values, reverse=True) and max(top_values) <= 0.0
        assert chosen == pytest.approx(top_values[top_ids.index(tokens[0])])


def test_step_logprobs_describe_the_processed_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().unsqueeze(0)
    # Greedy: the model's distribution as is (temperature 1).
    _, (raw,) = sample_step(logits, [_seq(4, temperature=0.0)])
    assert raw is not None and raw[1] == [0, 1, 2, 3]
    assert raw[2] == pytest.approx(probs.log().tolist(), abs=1e-6)
    # Temperature 0.5 squares the probabilities (renormalised); top-k does not truncate them.
    _, (raw,) = sample_step(logits, [_seq(2, temperature=0.5, top_k=1, seed=1)])
    squared = probs ** 2 / (probs ** 2).sum()
    assert raw is not None and raw[0] == pytest.approx(math.log(squared[0]), abs=1e-6)
    assert raw[2] == pytest.approx(squared.log()[:2].tolist(), abs=1e-6)
    # Logit bias moves the distribution it describes.
    tokens, (raw,) = sample_step(logits, [_seq(1, temperature=0.0, logit_bias={0: -100.0})])
    assert tokens == [1] and raw is not None and raw[1] == [1] and raw[0] == raw[2][0]


@pytest.fixture
def log_softmax_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of ``torch.log_softmax`` (on any thread) while the test runs."""
    calls: list[int] = []
    real = torch.log_softmax

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "log_softmax", counting)
    return calls


def test_only_rows_that_ask_get_logprobs_and_none_costs_nothing(log_softmax_calls: list[int]) -> None:
    calls = log_softmax_calls
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(3, 1)
    tokens, raws = sample_step(logits, [_seq(None, temperature=0.0), _seq(2, seed=1), _seq(None, seed=2)])
    assert raws[0] is None and raws[2] is None and raws[1] is not None and len(raws[1][1]) == 2
    assert len(calls) == 1
    calls.clear()
    tokens_again, raws = sample_step(logits, [_seq(None, temperature=0.0), _seq(None, seed=1),
                                              _seq(None, seed=2)])
    assert raws == [None, None, None] and not calls
    assert tokens_again == tokens  # asking for logprobs never changes what is drawn


async def test_a_request_without_logprobs_runs_no_log_softmax(engine: TransformersClient,
                                                              log_softmax_calls: list[int]) -> None:
    calls = log_softmax_calls
    answer = await engine.chat(chat(logprobs=False, top_logprobs=None, max_tokens=6))
    assert answer.choices[0].logprobs is None and not calls
    answer = await engine.chat(chat(max_tokens=6))
    assert len(calls) == answer.usage.completion_tokens  # one per step of the asking request


# ------------------------------------------------------------------ token texts and bytes


def test_token_pieces_match_the_tokenizer_over_the_whole_vocabulary(engine: TransformersClient) -> None:
    tokenizer = engine._encoder
    pieces = TokenPieces(tokenizer)
    for token_id in range(len(tokenizer)):
        text, data = pieces.get(token_id)
        assert text == tokenizer.decode([token_id], skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False)
        assert bytes(data).decode("utf-8", errors="replace") == text
    sample = "Café, 日本語のテキスト 🙂🚀 — «ok»"
    ids = tokenizer(sample, add_special_tokens=False).input_ids
    assert any("\ufffd" in pieces.get(i)[0] for i in ids)  # some token holds part of a character
    assert b"".join(bytes(pieces.get(i)[1]) for i in ids) == sample.encode("utf-8")


def test_completion_layout_keeps_offsets_across_chunks() -> None:
    from blueprint.llm.logprobs import TokenLogprob, TopLogprob

    tokens = [TokenLogprob("ab", [97, 98], -0.1, (TopLogprob("ab", [97, 98], -0.1),)),
              TokenLogprob("c", [99], -2.0, (TopLogprob("d", [100], -0.5), TopLogprob("d", [100], -0.6))),
              TokenLogprob("éf", [195, 169, 102], -0.3)]
    first, offset = completion_logprobs(tokens[:2])
    second, end = completion_logprobs(tokens[2:], text_offset=offset)
    assert first.text_offset == [0, 2] and second.text_offset == [3] and end == 5
    assert first.top_logprobs == [{"ab": -0.1}, {"d": -0.5, "c": -2.0}]
    assert second.top_logprobs == [{"éf": -0.3}]
