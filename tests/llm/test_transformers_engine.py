"""The transformers engine end to end, on the real tiny model loaded through the real code."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from blueprint.errors import (
    BackendError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
)
from blueprint.llm.chat_template import render_chat
from blueprint.llm.config import NodeConfig
from blueprint.llm.engines._hf_batching import Sequence, sample_next
from blueprint.llm.engines._hf_text import IncrementalDetokenizer, StopMatcher
from blueprint.llm.engines.transformers import TransformersClient
from blueprint.llm.sampling import SamplingParams
from blueprint.llm.types import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    parse_request,
)
from tests.devices import TEST_DEVICE

MODEL = "tiny"


@pytest.fixture(scope="module")
def engine_slots() -> int:
    """The module's ``engine`` (tests/llm/conftest.py) batches and queues 16: the batching tests
    send up to 16 requests at once."""
    return 16


@pytest.fixture(scope="module")
def eos_id(engine: TransformersClient) -> int:
    return engine._encoder.eos_token_id


def chat_request(**overrides: object) -> ChatCompletionRequest:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}],
                               "max_tokens": 12, "temperature": 0.9, "seed": 7}
    body.update(overrides)
    return parse_request(ChatCompletionRequest, body)


async def drain(stream: AsyncIterator) -> list:
    return [chunk async for chunk in stream]


async def wait_idle(engine: TransformersClient) -> None:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if engine._batcher.num_running == 0 and engine._batcher.num_waiting == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the engine did not go idle")


# ------------------------------------------------------------------ basic endpoints


async def test_chat_answers_with_usage_from_real_token_counts(engine: TransformersClient) -> None:
    request = chat_request()
    answer = await engine.chat(request)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    prompt_ids = engine._encode_chat(request.messages)
    assert prompt_ids[0] == engine._encoder.bos_token_id  # the tokenizer's template added BOS
    assert answer.usage.prompt_tokens == len(prompt_ids)
    assert 1 <= answer.usage.completion_tokens <= 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


async def test_completion_max_tokens_gives_length(engine: TransformersClient, eos_id: int) -> None:
    # Banning EOS through logit_bias makes the random model run until the cap.
    request = parse_request(CompletionRequest, {
        "model": MODEL, "prompt": "The quick brown fox", "max_tokens": 5, "seed": 1,
        "logit_bias": {str(eos_id): -100}, "echo": True})
    answer = await engine.complete(request)
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].text.startswith("The quick brown fox")
    assert answer.usage.completion_tokens == 5
    assert answer.usage.prompt_tokens == len(engine._encoder("The quick brown fox").input_ids)


async def test_max_tokens_capped_by_node_limit(tiny_model_dir: Path) -> None:
    client = TransformersClient(NodeConfig(model=MODEL, path=str(tiny_model_dir), device=TEST_DEVICE,
                                           max_output_tokens=3, options={"ignore_eos": True}))
    await client.start()
    try:
        answer = await client.chat(chat_request(max_tokens=50))
        assert answer.usage.completion_tokens == 3 and answer.choices[0].finish_reason == "length"
        assert client.models()[0].max_output_length == 3
    finally:
        await client.close()


async def test_models_describe_the_node(engine: TransformersClient) -> None:
    (info,) = engine.models()
    assert info.id == MODEL and info.context_length == 512 and info.quantization == "fp32"
    assert info.is_ready is True
    assert engine.capabilities().embeddings is True


async def test_embeddings_are_normalized_pooled_states(engine: TransformersClient) -> None:
    texts = ["hello world", "a rather longer sentence about foxes", "hello world"]
    response = await engine.embed(EmbeddingRequest(model=MODEL, input=texts))
    vectors = [item.embedding for item in response.data]
    assert [item.index for item in response.data] == [0, 1, 2]
    assert len(vectors[0]) == engine._model.config.hidden_size
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-5)  # padding does not leak in
    assert vectors[0] != pytest.approx(vectors[1], abs=1e-3)
    expected = sum(len(engine._encoder(t).input_ids) for t in texts)
    assert response.usage.prompt_tokens == expected == response.usage.total_tokens

    short = await engine.embed(EmbeddingRequest(model=MODEL, input="hello world", dimensions=8,
                                                encoding_format="base64"))
    raw = base64.b64decode(short.data[0].embedding)
    decoded = struct.unpack("<8f", raw)
    assert math.isclose(math.sqrt(sum(x * x for x in decoded)), 1.0, rel_tol=1e-4)
    ids = engine._encoder("hello world").input_ids
    by_ids = await engine.embed(EmbeddingRequest(model=MODEL, input=ids))
    assert by_ids.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)
    with pytest.raises(InvalidRequestError):
        await engine.embed(EmbeddingRequest(model=MODEL, input="x", dimensions=10_000))


# ------------------------------------------------------------------ streaming and sampling


async def test_stream_concatenates_to_the_seeded_answer(engine: TransformersClient) -> None:
    knobs = {"max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "top_k": 50, "seed": 1234}
    whole = await engine.chat(chat_request(**knobs))
    chunks = await drain(engine.chat_stream(chat_request(
        **knobs, stream=True, stream_options={"include_usage": True})))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3, "tokens must stream as several chunks"
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert len({c.id for c in chunks}) == 1


async def test_seed_gives_the_same_text_alone_or_batched(engine: TransformersClient) -> None:
    request = chat_request(max_tokens=16, temperature=1.0, seed=99)
    alone = await engine.chat(request)
    others = [chat_request(max_tokens=16, seed=i, messages=[{"role": "user", "content": "x" * i}])
              for i in range(1, 6)]
    together = await asyncio.gather(engine.chat(request), *(engine.chat(o) for o in others))
    assert together[0].choices[0].message.content == alone.choices[0].message.content
    different = await engine.chat(chat_request(max_tokens=16, temperature=1.0, seed=100))
    assert different.choices[0].message.content != alone.choices[0].message.content


async def test_stop_sequence_trims_the_output(engine: TransformersClient, eos_id: int) -> None:
    base = {"temperature": 0.0, "max_tokens": 40, "logit_bias": {str(eos_id): -100}}
    full = (await engine.chat(chat_request(**base))).choices[0].message.content
    assert len(full) > 12
    stop = full[8:11]
    cut = full[:full.index(stop)]
    stopped = await engine.chat(chat_request(**base, stop=[stop, "never-produced"]))
    assert stopped.choices[0].message.content == cut
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < 40
    chunks = await drain(engine.chat_stream(chat_request(**base, stop=stop, stream=True)))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut


async def test_n_choices_differ_and_count_usage(engine: TransformersClient, eos_id: int) -> None:
    answer = await engine.chat(chat_request(n=3, max_tokens=6, logit_bias={str(eos_id): -100}))
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert len({c.message.content for c in answer.choices}) > 1
    assert answer.usage.completion_tokens == 18


async def test_sixteen_concurrent_requests_are_batched(engine: TransformersClient) -> None:
    requests = [chat_request(seed=i, max_tokens=10, messages=[{"role": "user", "content": f"Q{i}"}])
                for i in range(16)]
    answers = await asyncio.gather(*(engine.chat(r) for r in requests))
    assert len(answers) == 16 and all(a.usage.completion_tokens >= 1 for a in answers)
    assert engine.peak_batch_size > 1
    assert engine.metrics().in_flight == 0


# ------------------------------------------------------------------ bad input and load


async def test_bad_requests_fail_cleanly_and_the_engine_keeps_serving(engine: TransformersClient) -> None:
    with pytest.raises(ModelNotFoundError):
        await engine.chat(chat_request(model="no-such-model"))
    with pytest.raises(ModelNotFoundError):
        await drain(engine.chat_stream(chat_request(model="no-such-model", stream=True)))
    long_prompt = "the quick brown fox " * 400
    with pytest.raises(ContextLengthExceededError):
        await engine.chat(chat_request(messages=[{"role": "user", "content": long_prompt}]))
    with pytest.raises(ContextLengthExceededError):
        await engine.embed(EmbeddingRequest(model=MODEL, input=long_prompt))
    with pytest.raises(InvalidRequestError):
        chat_request(max_tokens=-1)
    with pytest.raises(InvalidRequestError):
        chat_request(temperature=2.5)
    with pytest.raises(InvalidRequestError):
        await engine.chat(chat_request(logit_bias={"abc": 1}))
    with pytest.raises(InvalidRequestError):
        await engine.chat(chat_request(tools=[{"type": "function", "function": {"name": "f"}}],
                                       tool_choice={"type": "function", "function": {"name": "g"}}))
    answer = await engine.chat(chat_request())
    assert answer.usage.completion_tokens >= 1


async def test_overload_is_refused_at_once(tiny_model_dir: Path) -> None:
    client = TransformersClient(NodeConfig(model=MODEL, path=str(tiny_model_dir), device=TEST_DEVICE,
                                           max_batch_size=1, max_queue=1, options={"ignore_eos": True}))
    await client.start()
    try:
        streams = [client.chat_stream(chat_request(max_tokens=400, stream=True)) for _ in range(2)]
        for stream in streams:
            await anext(stream)
        assert client.metrics().load == 2
        with pytest.raises(OverloadedError):
            await client.chat(chat_request())
        for stream in streams:
            await stream.aclose()
        answer = await client.chat(chat_request(max_tokens=2))
        assert answer.usage.completion_tokens == 2
    finally:
        await client.close()


async def test_closing_a_stream_frees_its_slot(engine: TransformersClient, eos_id: int) -> None:
    await wait_idle(engine)
    stream = engine.chat_stream(chat_request(max_tokens=500, stream=True, logit_bias={str(eos_id): -100}))
    await anext(stream)
    await anext(stream)
    assert engine._outstanding == 1
    await stream.aclose()
    assert engine._outstanding == 0
    await wait_idle(engine)

    async def consume() -> None:
        await drain(engine.chat_stream(chat_request(max_tokens=500, stream=True,
                                                    logit_bias={str(eos_id): -100})))

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine._outstanding == 0
    await wait_idle(engine)


# ------------------------------------------------------------------ text pieces


def test_incremental_detokenizer_handles_split_characters(engine: TransformersClient) -> None:
    tokenizer = engine._encoder
    text = "Café 日本語 🙂🚀 naïve"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    detok = IncrementalDetokenizer(tokenizer, [tokenizer.bos_token_id])
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) + detok.flush() == text
    assert "" in pieces, "some byte-level tokens hold only part of a character"
    assert all("\ufffd" not in piece for piece in pieces)


def test_stop_matcher_holds_back_partial_matches() -> None:
    matcher = StopMatcher(["END", "\nUser:"])
    assert matcher.push("hello E") == ("hello ", False)
    assert matcher.push("N") == ("", False)
    assert matcher.push("x") == ("ENx", False)
    assert matcher.push(" ok\nUs") == (" ok", False)
    assert matcher.push("er: more") == ("", True)
    assert StopMatcher(["END"]).push("abcENDdef") == ("abc", True)
    tail = StopMatcher(["END"])
    assert tail.push("abcE") == ("abc", False) and tail.flush() == "E"


def test_chat_template_fallback_when_the_tokenizer_has_none(engine: TransformersClient) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(engine._path)
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    assert render_chat(tokenizer, messages).endswith("<|user|>\nHi<|end|>\n<|assistant|>\n")
    tokenizer.chat_template = None
    assert render_chat(tokenizer, messages) == "<|bos|>System: Be brief.\nUser: Hi\nAssistant:"


async def test_completion_stream_with_several_prompts(engine: TransformersClient, eos_id: int) -> None:
    body = {"model": MODEL, "prompt": ["Once upon", "def add(a, b):"], "max_tokens": 8, "seed": 5,
            "temperature": 0.8, "logit_bias": {str(eos_id): -100}}
    whole = await engine.complete(parse_request(CompletionRequest, body))
    chunks = await drain(engine.complete_stream(parse_request(CompletionRequest, {**body, "stream": True})))
    for choice in whole.choices:
        streamed = "".join(c.text for chunk in chunks for c in chunk.choices if c.index == choice.index)
        assert streamed == choice.text and choice.finish_reason == "length"
    assert whole.usage.completion_tokens == 16


# ------------------------------------------------------------------ sampling on crafted logits


def _seq(**params: object) -> Sequence:
    seq = Sequence(0, [0], 10, SamplingParams(**params), lambda _event: None)
    seq.generator = torch.Generator().manual_seed(int(params.get("seed", 0) or 0))
    if seq.params.frequency_penalty or seq.params.presence_penalty:
        seq.counts = torch.zeros(4)
    return seq


def _probs_logits(*probs: float) -> torch.Tensor:
    return torch.tensor([probs]).log()


def test_sampling_knobs_on_known_distributions() -> None:
    logits = _probs_logits(0.5, 0.3, 0.15, 0.05)
    assert sample_next(logits, [_seq(temperature=0.0)]) == [0]
    assert sample_next(logits, [_seq(temperature=0.0, logit_bias={0: -100.0})]) == [1]
    penalized = _seq(temperature=0.0, presence_penalty=2.0)
    penalized.counts[0] = 1
    assert sample_next(logits, [penalized]) == [1]
    draws = [sample_next(logits, [_seq(top_k=2, seed=s)])[0] for s in range(200)]
    assert set(draws) == {0, 1}
    draws = [sample_next(logits, [_seq(top_p=0.6, seed=s)])[0] for s in range(200)]
    assert set(draws) == {0, 1}  # 0.5 alone is below 0.6, so the second token is needed too
    draws = [sample_next(logits, [_seq(min_p=0.5, seed=s)])[0] for s in range(200)]
    assert set(draws) == {0, 1}  # threshold 0.25
    draws = [sample_next(logits, [_seq(seed=s)])[0] for s in range(2000)]
    frequencies = [draws.count(t) / len(draws) for t in range(4)]
    assert frequencies == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.04)


def test_a_rows_draw_does_not_depend_on_its_neighbours() -> None:
    logits = _probs_logits(0.25, 0.25, 0.25, 0.25)
    alone = [sample_next(logits, [_seq(seed=s)])[0] for s in range(50)]
    batched = [sample_next(logits.repeat(3, 1), [_seq(seed=s), _seq(top_k=2, seed=99),
                                                   _seq(temperature=0.0)])[0] for s in range(50)]
    assert alone == batched and len(set(alone)) > 1


async def test_a_failing_forward_is_a_backend_error_and_serving_goes_on(engine: TransformersClient) -> None:
    await wait_idle(engine)
    batcher = engine._batcher
    real_model = batcher._model

    def broken(**_kwargs: object) -> None:
        raise RuntimeError("simulated device failure")

    batcher._model = broken
    try:
        with pytest.raises(BackendError, match="simulated device failure"):
            await engine.chat(chat_request())
    finally:
        batcher._model = real_model
    assert engine._outstanding == 0
    assert (await engine.chat(chat_request(max_tokens=3))).usage.completion_tokens >= 1


def _unchecked(**fields: object) -> CompletionRequest:
    """A request that skipped validation (as if a bound were missing): what the batcher must
    survive on its own."""
    base = parse_request(CompletionRequest, {"model": MODEL, "prompt": "Once upon", "max_tokens": 24,
                                             "temperature": 0.8, "seed": 1})
    return base.model_copy(update=fields)


@pytest.mark.parametrize(("poison", "refused"), [
    ({"seed": 2**64}, True), ({"seed": -(2**63) - 1}, True), ({"logit_bias": {str(2**70): 5.0}}, True),
    ({"top_k": 2**63}, False),  # more than the vocabulary: no truncation at all
])
async def test_one_bad_sequence_fails_only_itself(engine: TransformersClient, poison: dict,
                                                  refused: bool) -> None:
    """Issue 11 row 3: a sequence whose parameters break its own preparation or sampling fails
    alone (a 400, not a node failure); its batch neighbours finish normally."""
    innocents = [engine.complete(_unchecked(prompt=f"Story {i}")) for i in range(4)]
    bad = engine.complete(_unchecked(**poison))
    *answers, failed = await asyncio.gather(*innocents, bad, return_exceptions=True)
    for answer in answers:
        assert not isinstance(answer, BaseException), answer
        assert answer.choices[0].text is not None and answer.usage.completion_tokens >= 1
    if refused:
        assert isinstance(failed, InvalidRequestError), failed
    else:
        assert not isinstance(failed, BaseException), failed


@pytest.fixture
def fragile_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling raises for any step holding a row with temperature 1.5 (a kernel refusing one
    request's parameters), as the batcher must survive."""
    from blueprint.llm.engines import _hf_batching

    real = _hf_batching.sample_step

    def fragile(logits: torch.Tensor, seqs: list) -> tuple:
        if any(seq.params.temperature == 1.5 for seq in seqs):
            raise RuntimeError("a kernel refused these parameters")
        return real(logits, seqs)

    monkeypatch.setattr(_hf_batching, "sample_step", fragile)


@pytest.mark.usefixtures("fragile_sampling")
async def test_a_sampling_failure_of_one_row_spares_the_others(engine: TransformersClient) -> None:
    """Whatever breaks while sampling one row (here: a row whose parameters make torch raise)
    ends that sequence only; the step goes on for the others."""
    innocents = [engine.complete(_unchecked(prompt=f"Story {i}")) for i in range(3)]
    bad = engine.complete(_unchecked(temperature=1.5))
    *answers, failed = await asyncio.gather(*innocents, bad, return_exceptions=True)
    assert all(not isinstance(answer, BaseException) for answer in answers), answers
    assert isinstance(failed, InvalidRequestError) and "kernel refused" in failed.message


@pytest.mark.usefixtures("fragile_sampling")
async def test_a_sampling_failure_admitted_alone_spares_the_running_sequences(
        engine: TransformersClient, eos_id: int) -> None:
    """A bad request admitted by itself (its prefill samples one row) while others are decoding:
    one row failing alone says nothing against the node, so it must not fail the whole batch."""
    innocents = [asyncio.ensure_future(engine.complete(_unchecked(
        prompt=f"Tale {i}", max_tokens=400, logit_bias={str(eos_id): -100.0}))) for i in range(3)]
    await asyncio.sleep(0.05)  # the innocents are admitted and decoding
    assert not any(task.done() for task in innocents)
    bad = engine.complete(_unchecked(temperature=1.5))
    failed, *answers = await asyncio.gather(bad, *innocents, return_exceptions=True)
    assert all(not isinstance(answer, BaseException) for answer in answers), answers
    assert isinstance(failed, InvalidRequestError) and "kernel refused" in failed.message
