"""The vLLM engine's tools and structured outputs, tested through the mapping (vLLM has no CPU
wheel, so this path has **not run** on vLLM here): the grammars it hands vLLM's ``guidance``
backend compile with llguidance (the library that backend is) and are the bounded ones the
transformers engine enforces; the engine's chat paths, driven by a stand-in of vLLM's engine
and output types, turn call blocks into OpenAI tool calls, streamed and not."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from blueprint.llm.config import NodeConfig
from blueprint.llm.engines.vllm import sampling_kwargs, structured_outputs_kwargs
from blueprint.llm.structured import plan_output
from blueprint.llm.types import ChatCompletionRequest

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


def test_json_schema_maps_to_bounded_json_and_drops_stops(tiny_model_dir: Path) -> None:
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    request = chat(stop=["}"], response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": SCHEMA}})
    kwargs = sampling_kwargs(request, 64, plan_output(request))
    assert "stop" not in kwargs
    schema = kwargs["structured_outputs"]["json"]
    assert schema["properties"]["city"]["maxLength"] <= 64  # bounded to fit the budget
    lltok = llguidance.hf.from_tokenizer(AutoTokenizer.from_pretrained(tiny_model_dir))
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    assert llguidance.LLMatcher.validate_grammar(grammar, lltok) == ""
    free = chat(stop=["}"])
    assert sampling_kwargs(free, 64, plan_output(free))["stop"] == ["}"]
    assert structured_outputs_kwargs(plan_output(free), 64) is None


def test_required_tools_map_to_a_lark_grammar_guidance_accepts(tiny_model_dir: Path) -> None:
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    request = chat(tools=[TOOL], tool_choice="required")
    grammar = structured_outputs_kwargs(plan_output(request), 128)
    assert grammar is not None and set(grammar) == {"grammar"}
    lltok = llguidance.hf.from_tokenizer(AutoTokenizer.from_pretrained(tiny_model_dir))
    compiled = llguidance.LLMatcher.grammar_from_lark(grammar["grammar"])
    assert llguidance.LLMatcher.validate_grammar(compiled, lltok) == ""
    as_object = structured_outputs_kwargs(plan_output(chat(response_format={"type": "json_object"})), 64)
    assert as_object is not None and as_object["json"]["type"] == "object"


# ------------------------------------------------------------------------------ stand-in engine

CALL_TEXT = '<tool_call>\n{"name":"get_weather","arguments":{"city":"Oslo"}}\n</tool_call>'


@dataclass
class _Completion:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: Any = None


@dataclass
class _RequestOutput:
    outputs: list[_Completion]
    finished: bool
    num_cached_tokens: int = 3


@dataclass
class _Engine:
    """vLLM's ``AsyncLLM`` surface the engine uses: it 'generates' CALL_TEXT in three deltas."""

    seen: list[Any] = field(default_factory=list)

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> AsyncIterator[Any]:
        self.seen.append(sampling_params)
        stream = sampling_params.kwargs["output_kind"] == "DELTA"
        parts = [CALL_TEXT[:20], CALL_TEXT[20:50], CALL_TEXT[50:]]
        if not stream:
            yield _RequestOutput([_Completion(0, CALL_TEXT, [1] * 12, "stop")], True)
            return
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            yield _RequestOutput([_Completion(0, part, [1] * 4, "stop" if last else None)], last)

    async def abort(self, request_id: str) -> None:
        pass


class _Params:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


@pytest.fixture
def stand_in_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = _Params  # type: ignore[attr-defined]
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind = types.SimpleNamespace(DELTA="DELTA", FINAL_ONLY="FINAL_ONLY")  # type: ignore[attr-defined]
    sampling.StructuredOutputsParams = lambda **kw: ("StructuredOutputsParams", kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)


async def test_engine_turns_call_blocks_into_tool_calls(stand_in_vllm: None, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from blueprint.llm.engines.vllm import VllmClient

    client = VllmClient(NodeConfig(engine="vllm", model="m", path=str(tiny_model_dir),
                                   options={"tools": True}))
    engine = _Engine()
    client._engine, client._tokenizer, client._max_model_len = engine, AutoTokenizer.from_pretrained(
        tiny_model_dir), 2048
    request = chat(tools=[TOOL], tool_choice="required", max_tokens=200)
    answer = await client.chat(request)
    kind, structured = engine.seen[-1].kwargs["structured_outputs"]
    assert kind == "StructuredOutputsParams" and "grammar" in structured
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls is not None
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 3
    streamed = chat(tools=[TOOL], tool_choice="required", max_tokens=200, stream=True,
                    stream_options={"include_usage": True})
    chunks = [c async for c in client.chat_stream(streamed)]
    deltas = [d for c in chunks for ch in c.choices for d in (ch.delta.tool_calls or [])]
    assert deltas[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == {"city": "Oslo"}
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens_details.cached_tokens == 3
    assert "tools" in client.models()[0].supported_features
