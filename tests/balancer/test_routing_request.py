"""What the balancer reads off an API request: the features a node must support."""

from __future__ import annotations

import pytest

from blueprint.balancer.routing import for_chat, for_completion
from blueprint.llm.types import ChatCompletionRequest, CompletionRequest


@pytest.mark.parametrize("with_text", [True, False])
@pytest.mark.parametrize(("logprobs", "needs"), [(None, False), (0, True), (3, True)])
def test_completion_logprobs_count_zero_still_needs_logprobs(with_text: bool, logprobs: int | None,
                                                             needs: bool) -> None:
    request = CompletionRequest(model="m", prompt="hi", logprobs=logprobs)
    assert ("logprobs" in for_completion(request, with_text=with_text).features) is needs


def test_chat_features() -> None:
    plain = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    assert for_chat(plain).features == frozenset()
    asked = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], logprobs=True,
                                  top_logprobs=2)
    assert for_chat(asked).features == frozenset({"logprobs"})


def test_a_json_schema_needs_structured_outputs_not_only_json_mode() -> None:
    messages = [{"role": "user", "content": "hi"}]
    schema = ChatCompletionRequest(model="m", messages=messages, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    assert for_chat(schema).features == frozenset({"json_mode", "structured_outputs"})
    loose = ChatCompletionRequest(model="m", messages=messages, response_format={"type": "json_object"})
    assert for_chat(loose).features == frozenset({"json_mode"})
