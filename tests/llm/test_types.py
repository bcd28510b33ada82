"""Wire-type validation: what requests accept, ignore and refuse (blueprint/llm/types.py)."""

from __future__ import annotations

import pytest

from blueprint.errors import InvalidRequestError
from blueprint.llm.sampling import sampling_params
from blueprint.llm.types import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImagePart,
    TextPart,
    parse_request,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_unknown_request_fields_are_ignored() -> None:
    request = parse_request(ChatCompletionRequest, {**CHAT, "provider": {"order": ["x"]},
                                                    "transforms": ["middle-out"], "store": True})
    assert not hasattr(request, "provider") and request.model == "m"
    as_json = '{"model": "m", "prompt": "p", "metadata": {"a": 1}}'
    assert parse_request(CompletionRequest, as_json).prompt == "p"


def test_unknown_response_fields_are_kept() -> None:
    body = {"model": "m", "choices": [], "kv_transfer_params": {"x": 1}}
    assert ChatCompletion.model_validate(body).model_dump()["kv_transfer_params"] == {"x": 1}


@pytest.mark.parametrize("field, value", [
    ("max_tokens", -1), ("max_tokens", 0), ("max_completion_tokens", -5), ("temperature", 2.5),
    ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("frequency_penalty", 3),
    ("presence_penalty", -2.1), ("n", 0), ("n", 17), ("stop", ""), ("stop", ["a", ""]),
    ("min_p", 1.2), ("top_k", -2), ("repetition_penalty", 0), ("messages", []),
])
def test_out_of_range_values_are_invalid_requests(field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_request(ChatCompletionRequest, {**CHAT, field: value})
    assert field in info.value.message and info.value.param is not None
    assert info.value.http_status == 400


def test_malformed_json_and_missing_fields_are_invalid_requests() -> None:
    with pytest.raises(InvalidRequestError):
        parse_request(ChatCompletionRequest, b"{not json")
    with pytest.raises(InvalidRequestError):
        parse_request(ChatCompletionRequest, {"messages": CHAT["messages"]})
    with pytest.raises(InvalidRequestError):
        parse_request(ChatCompletionRequest, {**CHAT, "messages": [{"role": "user"}]})
    with pytest.raises(InvalidRequestError):
        parse_request(ChatCompletionRequest, {**CHAT, "messages": [{"role": "tool", "content": "x"}]})
    with pytest.raises(InvalidRequestError):
        parse_request(EmbeddingRequest, {"model": "m", "input": []})


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    both = parse_request(ChatCompletionRequest, {**CHAT, "max_tokens": 10, "max_completion_tokens": 3})
    assert both.requested_max_tokens() == 3
    assert sampling_params(both).max_tokens == 3
    legacy = parse_request(ChatCompletionRequest, {**CHAT, "max_tokens": 10})
    assert legacy.requested_max_tokens() == 10
    assert parse_request(ChatCompletionRequest, CHAT).requested_max_tokens() is None
    assert parse_request(CompletionRequest, {"model": "m", "prompt": "p"}).requested_max_tokens() == 16


def test_content_parts_are_parsed_and_joined() -> None:
    request = parse_request(ChatCompletionRequest, {**CHAT, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "this."},
    ]}]})
    message = request.messages[0]
    assert isinstance(message.content[0], TextPart) and isinstance(message.content[1], ImagePart)
    assert message.text() == "Describe this." and message.has_non_text_parts()
    with pytest.raises(InvalidRequestError):
        parse_request(ChatCompletionRequest, {**CHAT, "messages": [
            {"role": "user", "content": [{"type": "video", "video": {}}]}]})


def test_sampling_defaults_and_normalisation() -> None:
    params = sampling_params(parse_request(ChatCompletionRequest, CHAT))
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (1.0, 1.0, 0, 0.0)
    assert not params.greedy and not params.needs_filtering and not params.has_penalties
    tuned = sampling_params(parse_request(ChatCompletionRequest, {
        **CHAT, "temperature": 0, "top_k": -1, "stop": "END", "logit_bias": {"5": -100}, "seed": 3}))
    assert tuned.greedy and tuned.top_k == 0 and tuned.stop == ("END",)
    assert tuned.logit_bias == {5: -100.0} and tuned.seed == 3
    with pytest.raises(InvalidRequestError):
        sampling_params(parse_request(ChatCompletionRequest, {**CHAT, "logit_bias": {"5": 500}}))
