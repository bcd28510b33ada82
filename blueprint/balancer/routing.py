"""Turn a wire request into the :class:`RoutingRequest` strategies read.

The prompt text is what cache-aware routing matches prefixes on, so it must be built the same
way for the same conversation: roles and contents in order, the way a chat template lays them
out (the system prompt first), which is also the order in which a backend caches them.
"""

from __future__ import annotations

from blueprint.balancer.strategies.base import RoutingRequest
from blueprint.llm.types import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

#: Rough characters per token of English text and code, for size estimates only.
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def for_chat(request: ChatCompletionRequest, *, with_text: bool = True) -> RoutingRequest:
    """``with_text=False`` skips building the prompt text (only its size is estimated), for
    strategies that do not match on it."""
    if with_text:
        text = "".join(f"<{message.role}>{message.text()}\n" for message in request.messages)
        tokens = estimate_tokens(text)
    else:
        text = ""
        tokens = sum(len(message.text()) + len(message.role) + 3
                     for message in request.messages) // CHARS_PER_TOKEN + 1
    features: set[str] = set()
    if request.tools:
        features.add("tools")
    if request.response_format is not None and request.response_format.type != "text":
        features.add("json_mode")
        if request.response_format.type == "json_schema":
            features.add("structured_outputs")
    if request.logprobs:
        features.add("logprobs")
    return RoutingRequest(model=request.model, prompt_text=text, prompt_tokens=tokens,
                          max_tokens=request.requested_max_tokens(), features=frozenset(features))


def for_completion(request: CompletionRequest, *, with_text: bool = True) -> RoutingRequest:
    prompts = request.prompts()
    if not with_text:
        tokens = (sum(len(p) for p in prompts) + max(0, len(prompts) - 1)) // CHARS_PER_TOKEN + 1
        features = frozenset({"logprobs"}) if request.logprobs is not None else frozenset()
        return RoutingRequest(model=request.model, prompt_tokens=tokens,
                              max_tokens=request.requested_max_tokens(), features=features)
    text = "\n".join(prompts)
    # legacy ``logprobs`` is a count: 0 still asks for the sampled tokens' logprobs
    features = frozenset({"logprobs"}) if request.logprobs is not None else frozenset()
    return RoutingRequest(model=request.model, prompt_text=text, prompt_tokens=estimate_tokens(text),
                          max_tokens=request.requested_max_tokens(), features=features)


def for_embedding(request: EmbeddingRequest) -> RoutingRequest:
    texts = request.texts()
    text = "\n".join(texts) if texts else ""
    tokens = estimate_tokens(text) if texts else sum(len(ids) for ids in request.token_lists() or [])
    return RoutingRequest(model=request.model, prompt_text=text, prompt_tokens=tokens)
