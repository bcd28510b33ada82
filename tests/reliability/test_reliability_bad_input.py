"""Bad input from the chain, property-based: whatever bytes or JSON a caller pays to submit, the
router answers with a well-formed result (a response or an OpenAI-style error object), never
raises and never reports its own crash (``backend_error``: an engine or handler bug).

The handlers run against the real balancer and the real HTTP engine over an emulated backend on
loopback (trivial mode: no sleeps), so a request that passes the handler's checks is also
exercised through routing, the engine and the backend's validation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blueprint.balancer import Balancer
from blueprint.jobs.codec import decode_result, encode_inputs
from blueprint.jobs.router import RouteOutcome, Router
from blueprint.llm.config import NodeConfig
from blueprint.llm.registry import create_client
from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions

MODEL = "emu"
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
#: Codes that mean our own code failed rather than the input being wrong.
CRASH_CODES = {"backend_error", "internal_error", "stream_interrupted"}
OK_OBJECTS = {0: "chat.completion", 1: "text_completion", 2: "list"}

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
#: Field names the wire types know, so generated objects get past "unknown field" often enough to
#: reach the handlers' ceilings, the balancer and the engine.
KNOWN_KEYS = ["model", "messages", "prompt", "input", "max_tokens", "max_completion_tokens", "n",
              "best_of", "stream", "stream_options", "temperature", "top_p", "stop", "seed", "logprobs",
              "dimensions", "encoding_format", "tools", "response_format", "user", "echo", "suffix"]
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "nobody"]),
     "content": st.text(max_size=60) | json_values}), min_size=0, max_size=3)
field_values = st.integers(-3, 40) | st.booleans() | st.text(max_size=10) | json_values
near_valid = st.dictionaries(st.sampled_from(KNOWN_KEYS[1:]), field_values, max_size=4).flatmap(
    lambda d: st.fixed_dictionaries({}, optional={"messages": messages, "prompt": st.text(max_size=80),
                                                  "input": st.text(max_size=40)}).map(lambda e: {**d, **e}))

#: Chat bodies that are valid or off by one field's range: most reach the engine.
mostly_valid_chat = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]),
                                                 "content": st.text(max_size=60)}), min_size=1, max_size=3)},
    optional={"max_tokens": st.integers(-2, 64), "n": st.integers(-1, 20),
              "temperature": st.floats(-1, 3), "top_p": st.floats(-0.5, 1.5),
              "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=5),
              "seed": st.integers(-1, 2**64), "stream": st.booleans(), "logprobs": st.booleans()})

@dataclass
class Ctx:
    balancer: Balancer


class Harness:
    """An event loop owned by the module with a backend, a balancer and a router on it
    (hypothesis drives examples synchronously, each example runs one coroutine here)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.backend = EmulatedBackend(EmulatedOptions(model=MODEL, trivial=True, max_model_len=4096))
        self.router = Router(timeout_s=20.0)
        self.ctx: Ctx | None = None

    def start(self) -> Harness:
        self.loop.run_until_complete(self.backend.start())
        config = NodeConfig(name="fuzz-node", engine="openai", model=MODEL, base_url=self.backend.base_url)
        balancer = Balancer([create_client(config)], node_configs={config.node_name: config})
        self.loop.run_until_complete(balancer.start())
        self.ctx = Ctx(balancer)
        return self

    def route(self, job_index: int, inputs: bytes) -> RouteOutcome:
        async def call() -> RouteOutcome:
            async with asyncio.timeout(30):
                return await self.router.route(job_index, inputs, self.ctx)
        return self.loop.run_until_complete(call())

    def close(self) -> None:
        assert self.ctx is not None
        self.loop.run_until_complete(self.ctx.balancer.close())
        self.loop.run_until_complete(self.backend.stop())
        self.loop.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness().start()
    try:
        yield h
    finally:
        h.close()


def check(outcome: RouteOutcome, job_index: int) -> dict[str, Any]:
    """The invariants of every job answer; returns the decoded result."""
    result = json.loads(decode_result(outcome.output))
    assert json.loads(outcome.response) == result
    assert isinstance(result, dict)
    if "error" in result:
        error = result["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str)
        assert error["code"] == outcome.error_code and not outcome.ok
        assert outcome.error_code not in CRASH_CODES, error
    else:
        assert outcome.ok and result["object"] == OK_OBJECTS[job_index], result
    return result


@FUZZ
@given(job_index=st.integers(0, 255), data=st.binary(max_size=600))
def test_arbitrary_bytes_get_an_error_result(harness: Harness, job_index: int, data: bytes) -> None:
    outcome = harness.route(job_index, data)
    result = check(outcome, job_index)
    assert "error" in result  # random bytes are never valid ABI of (string, uint32, string) + JSON


@FUZZ
@given(job_index=st.integers(0, 2), model=st.sampled_from([MODEL, "", "other"]) | st.text(max_size=8),
       ceiling=st.integers(0, 2**32 - 1), body=json_values)
def test_arbitrary_json_in_valid_abi(harness: Harness, job_index: int, model: str, ceiling: int,
                                     body: Any) -> None:
    check(harness.route(job_index, encode_inputs(model, ceiling, json.dumps(body))), job_index)


@FUZZ
@given(job_index=st.integers(3, 255), body=json_values)
def test_unknown_job_index(harness: Harness, job_index: int, body: Any) -> None:
    outcome = harness.route(job_index, encode_inputs(MODEL, 8, json.dumps(body)))
    assert check(outcome, 0)["error"]["code"] == "unknown_job"


@FUZZ
@given(job_index=st.integers(0, 2), ceiling=st.integers(0, 2**32 - 1), body=near_valid)
def test_near_valid_requests(harness: Harness, job_index: int, ceiling: int, body: dict[str, Any]) -> None:
    """Objects built from the real field names: these reach the ceilings, pydantic, the balancer and
    the engine; some are valid and must then be answered with a real response."""
    check(harness.route(job_index, encode_inputs(MODEL, ceiling, json.dumps(body))), job_index)



@FUZZ
@given(ceiling=st.integers(0, 300), body=mostly_valid_chat)
def test_mostly_valid_chat(harness: Harness, ceiling: int, body: dict[str, Any]) -> None:
    result = check(harness.route(0, encode_inputs(MODEL, ceiling, json.dumps(body))), 0)
    if "error" not in result:  # never more than the caller paid for
        assert result["usage"]["completion_tokens"] <= ceiling

@FUZZ
@given(text=st.text(max_size=200), ceiling=st.integers(0, 2**32 - 1))
def test_arbitrary_text_as_request(harness: Harness, text: str, ceiling: int) -> None:
    result = check(harness.route(0, encode_inputs(MODEL, ceiling, text)), 0)
    assert "error" in result or text.strip().startswith("{")


@FUZZ
@given(values=st.lists(st.text(max_size=30) | st.integers(0, 2**32 - 1), min_size=0, max_size=5))
def test_wrong_abi_shapes(harness: Harness, values: list[Any]) -> None:
    """Valid ABI of the wrong types (a caller with a different encoder)."""
    types = ["string" if isinstance(v, str) else "uint256" for v in values]
    result = check(harness.route(0, abi_encode(types, values)), 0)
    assert "error" in result


def test_a_valid_job_is_answered(harness: Harness) -> None:
    """The harness is not rigged to fail: a good job gets a real completion."""
    body = {"messages": [{"role": "user", "content": "hello"}]}
    result = check(harness.route(0, encode_inputs(MODEL, 8, body)), 0)
    assert result["usage"]["completion_tokens"] == 8


def test_the_crash_check_can_fail(harness: Harness) -> None:
    """A handler that raises is reported as ``backend_error``, which ``check`` rejects."""
    async def boom(inputs: Any, ctx: Any) -> Any:
        raise KeyError("bug")

    crashing = Router({0: boom})
    outcome = harness.loop.run_until_complete(crashing.route(0, encode_inputs(MODEL, 8, "{}"), harness.ctx))
    with pytest.raises(AssertionError):
        check(outcome, 0)


def _nest(depth: int, shape: str) -> str:
    """JSON nested ``depth`` deep: arrays, objects, or both alternating."""
    if shape == "array":
        return "[" * depth + "]" * depth
    if shape == "object":
        return '{"a":' * depth + "1" + "}" * depth
    return '[{"a":' * (depth // 2) + "1" + "}]" * (depth // 2)


#: Where a nested value sits in an otherwise valid request of each job.
DEEP_SLOTS = {
    0: ['{{"messages":{v}}}', '{{"messages":[{{"role":"user","content":{v}}}]}}',
        '{{"messages":[{{"role":"user","content":"hi"}}],"tools":{v}}}',
        '{{"messages":[{{"role":"user","content":"hi"}}],"response_format":{{"type":"json_schema",'
        '"json_schema":{v}}}}}', '{v}'],
    1: ['{{"prompt":{v}}}', '{{"prompt":"hi","logit_bias":{v}}}', '{v}'],
    2: ['{{"input":{v}}}', '{v}'],
}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(job_index=st.integers(0, 2), slot=st.integers(0, 4),
       depth=st.sampled_from([150, 199, 200, 201, 1_000]) | st.integers(201, 100_000),
       shape=st.sampled_from(["array", "object", "mixed"]))
def test_deeply_nested_job_inputs(harness: Harness, job_index: int, slot: int, depth: int,
                                  shape: str) -> None:
    """Nesting beyond what the parser allows (web3 raised the recursion limit to 100,000, so the
    standard library's parser overflowed the C stack here) is an error result, never a crash."""
    templates = DEEP_SLOTS[job_index]
    request = templates[slot % len(templates)].format(v=_nest(depth, shape))
    result = check(harness.route(job_index, encode_inputs(MODEL, 8, request)), job_index)
    if depth > 200:
        assert "error" in result



#: Values at and past the edges of what engines can take (int64, uint64, doubles), and the
#: non-integers that must not be coerced into integers where money or compute is at stake.
EDGE_NUMBERS = st.sampled_from([
    0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63),
    -(2**63) - 1, 10**30, -(10**30), 0.0, -0.0, 0.5, 1.0, 2.0, 400.0, 1e308, -1e308, 5e-324,
    "400", "1", "1e3", " 7", True, False, None,
]) | st.integers(-(2**80), 2**80) | st.floats(allow_nan=False, allow_infinity=False)
NUMERIC_FIELDS = ["max_tokens", "max_completion_tokens", "n", "seed", "top_k", "temperature", "top_p",
                  "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "top_logprobs",
                  "logprobs", "best_of", "dimensions"]
#: The numeric fields each job's request type knows (others are ignored, like any unknown field).
KNOWN_BY_JOB = {0: set(NUMERIC_FIELDS) - {"logprobs", "best_of", "dimensions"},
                1: set(NUMERIC_FIELDS) - {"max_completion_tokens", "top_logprobs", "dimensions"},
                2: {"dimensions"}}
INTEGER_FIELDS = {"max_tokens", "max_completion_tokens", "n", "seed", "top_k", "top_logprobs",
                  "best_of", "dimensions"}


@FUZZ
@given(job_index=st.integers(0, 2), ceiling=st.integers(0, 64),
       fields=st.dictionaries(st.sampled_from(NUMERIC_FIELDS), EDGE_NUMBERS, min_size=1, max_size=3))
def test_numeric_edge_values(harness: Harness, job_index: int, ceiling: int,
                             fields: dict[str, Any]) -> None:
    """Every numeric field at its edges: an error result or a response within the paid ceiling;
    an integer field given as a string, a float or a boolean is refused, never coerced."""
    base: dict[str, Any] = ({"messages": [{"role": "user", "content": "hi"}]} if job_index == 0 else
                            {"prompt": "hi"} if job_index == 1 else {"input": "hi"})
    result = check(harness.route(job_index, encode_inputs(MODEL, ceiling, {**base, **fields})), job_index)
    coerced = [k for k, v in fields.items()
               if k in INTEGER_FIELDS & KNOWN_BY_JOB[job_index] and v is not None
               and isinstance(v, (str, float, bool))]
    if coerced:
        assert "error" in result, (coerced, result)
    if "error" not in result and job_index != 2:
        assert result["usage"]["completion_tokens"] <= ceiling
