"""Grammar-constrained decoding in the transformers engine, on the tiny random model: JSON
schemas and tool calls always valid within the budget (or an honest ``length``), tool-call
parsing, streamed deltas, reasoning tags, and the pure pieces (schema bounds, parsers)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from blueprint.errors import InvalidRequestError
from blueprint.llm import json_bounds
from blueprint.llm.engines.transformers import TransformersClient
from blueprint.llm.reasoning import ReasoningSplitter
from blueprint.llm.structured import OutputPlan, ToolSpec, grammar_spec, plan_output
from blueprint.llm.tool_calls import ToolCallStream, parse_tool_calls
from blueprint.llm.types import ChatCompletionRequest
from tests.llm.conftest import MODEL

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 130},
                         "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number"}},
    "required": ["a", "b"], "additionalProperties": False}}}
TOOL_SCHEMAS = {"get_weather": WEATHER["function"]["parameters"], "add": ADD["function"]["parameters"]}


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields})


def json_format(schema: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": strict}}


# ------------------------------------------------------------------------------ pure pieces


SCHEMAS = [
    PERSON,
    {"type": "object", "properties": {"x": {"type": "number"}, "free": {}}, "required": ["x", "free"]},
    {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
    {"type": "object"},
    {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "integer"}, {"type": "null"}]},
    {"$defs": {"p": {"type": "object", "properties": {"q": {"type": "boolean"}}, "required": ["q"]}},
     "type": "object", "properties": {"p": {"$ref": "#/$defs/p"}}, "required": ["p"]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("budget", [60, 400])
def test_bounded_schema_random_walks_stay_valid_and_within_bound(schema: dict[str, Any], budget: int,
                                                                 tiny_model_dir: Path) -> None:
    """A walk that picks a random allowed token each step behaves like a random-weight model:
    it must always end, within the bound, with JSON valid against the *original* schema."""
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lltok = llguidance.hf.from_tokenizer(tokenizer)
    spec = grammar_spec(OutputPlan(json_schema=schema), budget)
    assert spec is not None and spec.fits and spec.max_bytes is not None and spec.max_bytes <= budget
    grammar = llguidance.LLMatcher.grammar_from_json_schema(spec.source)
    rng = random.Random(7)
    for _ in range(25):
        matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        tokens: list[int] = []
        while not matcher.is_stopped():
            mask = matcher.compute_bitmask()
            allowed = [t for t in range(lltok.vocab_size) if mask[t // 8] >> (t % 8) & 1]
            token = rng.choice(allowed)
            if token == lltok.eos_token:
                break
            assert matcher.consume_token(token)
            tokens.append(token)
        text = lltok.decode_bytes(tokens)
        assert len(tokens) <= len(text) <= spec.max_bytes
        jsonschema.validate(json.loads(text), schema)


def test_bounds_narrow_and_report_what_cannot_fit() -> None:
    bounded = json_bounds.bounded_schema(PERSON, 10_000)
    assert bounded.caps == json_bounds.CAP_LADDER[0] and bounded.fits(10_000)
    assert bounded.schema["properties"]["name"]["maxLength"] == 1024
    many = {"type": "object", "required": [f"f{i}" for i in range(50)],
            "properties": {f"f{i}": {"type": "string", "minLength": 5} for i in range(50)}}
    assert not json_bounds.bounded_schema(many, 100).fits(100)
    recursive = {"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
                 "$ref": "#/$defs/n"}
    assert json_bounds.bounded_schema(recursive, 10_000).max_bytes is None


def test_tool_call_stream_split_anywhere_gives_the_same_calls() -> None:
    text = ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa ris", '
            '"n": [1, {"x": "}"}]}}\n</tool_call>\n<tool_call>\n{"arguments": {"a": 1}, "name": "add"}'
            '\n</tool_call>')
    whole = parse_tool_calls(text)
    assert whole.content == "Let me check."
    assert [(name, json.loads(args)) for _, name, args in whole.calls] == [
        ("get_weather", {"city": "Pa ris", "n": [1, {"x": "}"}]}), ("add", {"a": 1})]
    for cut in range(1, len(text)):
        stream = ToolCallStream()
        pieces = stream.feed(text[:cut]) + stream.feed(text[cut:])
        pieces += stream.finish()[0]
        args = ["", ""]
        for piece in pieces:
            if piece.kind == "arguments":
                args[piece.index] += piece.text
        assert [json.loads(a) for a in args] == [json.loads(c[2]) for c in whole.calls], cut


def test_malformed_call_block_stays_text() -> None:
    parsed = parse_tool_calls("<tool_call>\nnot json\n</tool_call> ok")
    assert parsed.calls == [] and parsed.content == "<tool_call>\nnot json\n</tool_call> ok"


def test_reasoning_splitter_split_anywhere() -> None:
    text = "<think>\nI should add 2 and 3.</think>\n\nThe answer is 5."
    for cut in range(len(text) + 1):
        splitter = ReasoningSplitter()
        parts = [splitter.feed(text[:cut]), splitter.feed(text[cut:]), splitter.finish()]
        assert "".join(p[0] for p in parts) == "\nI should add 2 and 3."
        assert "".join(p[1] for p in parts).lstrip("\n") == "The answer is 5."
    opened = ReasoningSplitter(starts_inside=True)
    assert opened.feed("hm</think>yes") == ("hm", "yes")


def test_plan_refuses_client_mistakes() -> None:
    with pytest.raises(InvalidRequestError, match="not among the tools"):
        plan_output(chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}))
    with pytest.raises(ValidationError, match="needs tools"):  # refused by the wire type, for every engine
        chat(tool_choice="required")
    with pytest.raises(InvalidRequestError, match="tool_choice must be"):
        plan_output(chat(tools=[WEATHER], tool_choice="sometimes"))
    plan = plan_output(chat(tools=[WEATHER, ADD], tool_choice="required", parallel_tool_calls=False))
    assert plan.max_calls == 1 and [t.name for t in plan.forced_tools] == ["get_weather", "add"]
    auto = plan_output(chat(tools=[WEATHER]))
    assert auto.parse_tools and not auto.constrained
    assert plan_output(chat(tools=[WEATHER], tool_choice="none")).parse_tools is False
    spec = grammar_spec(OutputPlan(forced_tools=(ToolSpec("f", {"type": "object"}),), max_calls=4), 300)
    assert spec is not None and spec.kind == "lark" and spec.fits


# ------------------------------------------------------------------------------ the engine


def _valid(text: str, schema: dict[str, Any]) -> None:
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(("max_tokens", "seeds"), [(None, 1), (80, 3), (30, 3)])
async def test_json_schema_answers_validate(engine: TransformersClient, max_tokens: int | None,
                                            seeds: int) -> None:
    for seed in range(seeds):
        out = await engine.chat(chat(response_format=json_format(PERSON), max_tokens=max_tokens, seed=seed))
        choice = out.choices[0]
        assert choice.finish_reason == "stop", choice
        assert choice.message.content is not None
        _valid(choice.message.content, PERSON)
        assert out.usage is not None and (max_tokens is None or out.usage.completion_tokens <= max_tokens)


async def test_json_object_and_non_strict_schema(engine: TransformersClient) -> None:
    for seed in range(2):
        out = await engine.chat(chat(response_format={"type": "json_object"}, seed=seed, n=2, max_tokens=60))
        for choice in out.choices:
            assert choice.finish_reason == "stop"
            assert isinstance(json.loads(choice.message.content or ""), dict)
        loose = await engine.chat(chat(response_format=json_format(PERSON, strict=False), seed=seed,
                                       max_tokens=60))
        _valid(loose.choices[0].message.content or "", PERSON)


async def test_budget_too_small_finishes_length_never_stop(engine: TransformersClient) -> None:
    out = await engine.chat(chat(response_format=json_format(PERSON), max_tokens=4))
    assert out.choices[0].finish_reason == "length"
    with pytest.raises(ValueError):
        json.loads(out.choices[0].message.content or "")


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
async def test_forced_tool_calls_validate(engine: TransformersClient, choice: Any) -> None:
    for seed in range(3):
        out = await engine.chat(chat(tools=[WEATHER, ADD], tool_choice=choice, seed=seed, max_tokens=120))
        message = out.choices[0].message
        assert out.choices[0].finish_reason == "tool_calls"
        assert message.tool_calls and message.content is None
        for call in message.tool_calls:
            assert call.id.startswith("call_") and call.type == "function"
            if isinstance(choice, dict):
                assert call.function.name == "add"
            jsonschema.validate(json.loads(call.function.arguments), TOOL_SCHEMAS[call.function.name])


async def test_parallel_false_gives_one_call(engine: TransformersClient) -> None:
    for seed in range(3):
        out = await engine.chat(chat(tools=[WEATHER, ADD], tool_choice="required", seed=seed,
                                     parallel_tool_calls=False, max_tokens=60))
        assert len(out.choices[0].message.tool_calls or []) == 1


async def test_streamed_tool_calls_use_openai_delta_shape(engine: TransformersClient) -> None:
    request = chat(tools=[WEATHER, ADD], tool_choice="required", seed=3, stream=True, max_tokens=150,
                   stream_options={"include_usage": True})
    chunks = [c async for c in engine.chat_stream(request)]
    deltas = [d for c in chunks for ch in c.choices for d in (ch.delta.tool_calls or [])]
    assert chunks[0].choices[0].delta.role == "assistant"
    starts = [d for d in deltas if "id" in d]
    assert starts and all(d["type"] == "function" and d["function"]["arguments"] == "" for d in starts)
    arguments: dict[int, str] = {}
    for d in deltas:
        if "id" not in d:
            assert set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
            arguments[d["index"]] = arguments.get(d["index"], "") + d["function"]["arguments"]
    for start in starts:
        jsonschema.validate(json.loads(arguments[start["index"]]), TOOL_SCHEMAS[start["function"]["name"]])
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens_details is not None
    # The same seed, not streamed: the same calls.
    whole = await engine.chat(chat(tools=[WEATHER, ADD], tool_choice="required", seed=3, max_tokens=150))
    assert [c.function.arguments for c in whole.choices[0].message.tool_calls or []] == \
        [arguments[s["index"]] for s in starts]


async def test_auto_and_none_answer_text_and_template_gets_tools(engine: TransformersClient) -> None:
    out = await engine.chat(chat(tools=[WEATHER], tool_choice="auto", max_tokens=8, seed=1))
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.choices[0].message.tool_calls is None
    with_tools = await engine.count_tokens(chat(tools=[WEATHER]).messages)
    assert with_tools is not None
    prompt_tools = (await engine.chat(chat(tools=[WEATHER], tool_choice="none", max_tokens=1))).usage
    plain = (await engine.chat(chat(max_tokens=1))).usage
    assert prompt_tools is not None and plain is not None and prompt_tools.prompt_tokens > plain.prompt_tokens


async def test_conversation_with_tool_calls_and_tool_results(engine: TransformersClient) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    out = await engine.chat(ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": messages, "tools": [WEATHER], "max_tokens": 3}))
    assert out.choices[0].finish_reason in ("stop", "length")


async def test_schema_the_grammar_cannot_enforce_is_a_client_error(engine: TransformersClient) -> None:
    with pytest.raises(InvalidRequestError, match="cannot be enforced"):
        await engine.chat(chat(response_format=json_format(
            {"type": "array", "items": {"type": "integer"}, "uniqueItems": True})))


def test_capabilities_declare_tools_and_structured_outputs(engine: TransformersClient) -> None:
    caps = engine.capabilities()
    assert caps.tools and caps.json_mode and caps.structured_outputs
    assert {"tools", "json_mode", "structured_outputs"} <= set(engine.models()[0].supported_features)


async def test_a_template_that_rejects_the_conversation_is_a_client_error(
        engine: TransformersClient) -> None:
    """Templates such as Llama's raise on a conversation they cannot render (roles that do not
    alternate): that is the client's mistake (400), not a server error."""
    template = engine._encoder.chat_template
    engine._encoder.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    try:
        with pytest.raises(InvalidRequestError, match="roles must alternate"):
            await engine.chat(chat(max_tokens=1))
    finally:
        engine._encoder.chat_template = template


async def test_thinking_goes_to_reasoning_with_its_token_count(engine: TransformersClient) -> None:
    """A template that opens ``<think>`` in the generation prompt (Qwen3/DeepSeek-R1 style):
    what the model writes until ``</think>`` is reasoning, streamed as ``delta.reasoning`` and
    counted in ``reasoning_tokens``; ``reasoning.exclude`` drops it from the answer."""
    from blueprint.testing.tiny_model import CHAT_TEMPLATE

    template, thinks = engine._encoder.chat_template, engine._thinks
    engine._encoder.chat_template, engine._thinks = CHAT_TEMPLATE + "<think>\n", True
    try:
        out = await engine.chat(chat(max_tokens=6, seed=5))
        message, usage = out.choices[0].message, out.usage
        assert message.reasoning and not message.content
        assert usage is not None and usage.completion_tokens_details is not None
        assert usage.completion_tokens_details.reasoning_tokens == usage.completion_tokens == 6
        chunks = [c async for c in engine.chat_stream(chat(max_tokens=6, seed=5, stream=True))]
        streamed = "".join(ch.delta.reasoning or "" for c in chunks for ch in c.choices)
        assert streamed == message.reasoning
        hidden = await engine.chat(chat(max_tokens=6, seed=5, reasoning={"exclude": True}))
        assert hidden.choices[0].message.reasoning is None
        assert "reasoning" in engine.capabilities().features()
    finally:
        engine._encoder.chat_template, engine._thinks = template, thinks
