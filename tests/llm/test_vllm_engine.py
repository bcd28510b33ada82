"""The in-process vLLM engine: vLLM cannot run on these machines (no CPU wheel), so this tests the
missing-vLLM configuration error and the pure mapping onto vLLM's parameters (the mapping of
vLLM's logprobs back onto ours is in test_vllm_logprobs.py)."""

from __future__ import annotations

import sys

import pytest

from blueprint.errors import InvalidRequestError
from blueprint.llm.config import NodeConfig
from blueprint.llm.engines.vllm import (
    VllmClient,
    check_logprobs_request,
    map_finish_reason,
    render_chat_fallback,
    requested_logprobs,
    sampling_kwargs,
)
from blueprint.llm.registry import create_client
from blueprint.llm.types import ChatCompletionRequest, CompletionRequest, parse_request


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import vllm`` fail even on a machine where it is installed."""
    monkeypatch.setitem(sys.modules, "vllm", None)


def test_missing_vllm_fails_at_configuration_with_advice(no_vllm: None) -> None:
    config = NodeConfig(engine="vllm", model="m", path="/models/m")
    with pytest.raises(InvalidRequestError) as caught:
        VllmClient(config)
    assert "[vllm]" in caught.value.message and "CUDA" in caught.value.message
    assert caught.value.code == "engine_unavailable"
    with pytest.raises(InvalidRequestError, match="vllm"):  # the same through the registry
        create_client(config)


def test_sampling_parameters_map_onto_vllm_names() -> None:
    request = parse_request(ChatCompletionRequest, {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3,
        "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 11, "stop": "END",
        "frequency_penalty": 0.5, "presence_penalty": -0.5, "repetition_penalty": 1.1, "n": 2,
        "logit_bias": {"42": -100}, "logprobs": True, "top_logprobs": 3,
    })
    assert sampling_kwargs(request, 20) == {
        "max_tokens": 20, "temperature": 0.3, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 11,
        "frequency_penalty": 0.5, "presence_penalty": -0.5, "repetition_penalty": 1.1, "n": 2,
        "stop": ["END"], "logit_bias": {42: -100}, "logprobs": 3,
    }


def test_unset_fields_keep_vllm_defaults() -> None:
    request = parse_request(CompletionRequest, {"model": "m", "prompt": "x"})
    assert sampling_kwargs(request, 5) == {"max_tokens": 5, "n": 1}
    with_logprobs = parse_request(CompletionRequest, {"model": "m", "prompt": "x", "logprobs": 2})
    assert sampling_kwargs(with_logprobs, 5)["logprobs"] == 2


def test_vllm_is_asked_for_the_logprobs_we_report() -> None:
    """vLLM's ``logprobs`` is the number of alternatives per token (0: the sampled token's only;
    absent: none), the same count the responses report."""
    messages = [{"role": "user", "content": "hi"}]
    cases: list[tuple[type[ChatCompletionRequest | CompletionRequest], dict[str, object], int | None]] = [
        (ChatCompletionRequest, {"messages": messages}, None),
        (ChatCompletionRequest, {"messages": messages, "logprobs": False}, None),
        (ChatCompletionRequest, {"messages": messages, "logprobs": True}, 0),
        (ChatCompletionRequest, {"messages": messages, "logprobs": True, "top_logprobs": 0}, 0),
        (ChatCompletionRequest, {"messages": messages, "logprobs": True, "top_logprobs": 20}, 20),
        (CompletionRequest, {"prompt": "x"}, None),
        (CompletionRequest, {"prompt": "x", "logprobs": 0}, 0),
        (CompletionRequest, {"prompt": "x", "logprobs": 5}, 5),
    ]
    for kind, body, wanted in cases:
        request = parse_request(kind, {"model": "m", **body})
        assert requested_logprobs(request) == wanted, body
        assert sampling_kwargs(request, 5).get("logprobs", None) == wanted, body
        assert ("logprobs" in sampling_kwargs(request, 5)) is (wanted is not None), body


def test_logprob_requests_that_cannot_be_honoured_are_refused() -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(InvalidRequestError) as caught:
        check_logprobs_request(parse_request(ChatCompletionRequest, {
            "model": "m", "messages": messages, "top_logprobs": 3}))
    assert caught.value.param == "top_logprobs"
    with pytest.raises(InvalidRequestError) as caught:
        check_logprobs_request(parse_request(CompletionRequest, {
            "model": "m", "prompt": "x", "logprobs": 2, "echo": True}))
    assert caught.value.param == "echo"
    # What can be honoured passes.
    check_logprobs_request(parse_request(ChatCompletionRequest, {
        "model": "m", "messages": messages, "logprobs": True, "top_logprobs": 3}))
    check_logprobs_request(parse_request(CompletionRequest, {"model": "m", "prompt": "x", "echo": True}))


def test_chat_fallback_prompt_and_finish_reasons() -> None:
    request = parse_request(ChatCompletionRequest, {"model": "m", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
    assert render_chat_fallback(request.messages) == "system: Be brief.\nuser: Hi\nassistant:"
    assert [map_finish_reason(r) for r in ("stop", "length", "abort", None)] == [
        "stop", "length", "error", None]
