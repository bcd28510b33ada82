"""The job codec: inputs and results round-trip, and malformed inputs become a clear error."""

from __future__ import annotations

import json

import pytest
from eth_abi import encode as abi_encode
from hypothesis import given
from hypothesis import strategies as st

from blueprint.errors import InvalidRequestError
from blueprint.jobs.codec import (
    decode_inputs,
    decode_result,
    decode_result_json,
    encode_inputs,
    encode_result,
)
from blueprint.llm.types import ChatCompletionRequest, ChatMessage


@given(model=st.text(), max_tokens=st.integers(0, 2**32 - 1), request=st.text())
def test_inputs_round_trip(model: str, max_tokens: int, request: str) -> None:
    decoded = decode_inputs(encode_inputs(model, max_tokens, request))
    assert (decoded.model, decoded.max_tokens, decoded.request) == (model, max_tokens, request)


def test_inputs_are_the_solidity_layout() -> None:
    """Byte-for-byte what ``abi.encode(string, uint32, string)`` gives in Solidity."""
    body = {"messages": [{"role": "user", "content": "hi"}]}
    text = json.dumps(body, separators=(",", ":"))
    expected = abi_encode(["string", "uint32", "string"], ["tiny", 64, text])
    assert encode_inputs("tiny", 64, body) == expected
    assert expected[:32] == (96).to_bytes(32, "big")  # head: offset of the first string


def test_inputs_from_wire_model() -> None:
    req = ChatCompletionRequest(model="tiny", messages=[ChatMessage(role="user", content="hi")])
    decoded = decode_inputs(encode_inputs("tiny", 8, req))
    assert json.loads(decoded.request)["messages"][0]["content"] == "hi"


@pytest.mark.parametrize("data", [b"", b"\x00" * 31, b"\xff" * 96, b"not abi at all" * 7,
                                  abi_encode(["string"], ["only one"])])
def test_malformed_inputs(data: bytes) -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_inputs(data)
    assert info.value.code == "malformed_inputs"


def test_max_tokens_out_of_uint32() -> None:
    with pytest.raises(ValueError):
        encode_inputs("m", 2**32, "{}")


def test_result_round_trip() -> None:
    payload = {"error": {"type": "invalid_request_error", "message": "x", "code": "bad"}}
    assert decode_result_json(encode_result(payload)) == payload
    assert decode_result(encode_result("héllo 🙂")) == "héllo 🙂"
    assert encode_result("x") == abi_encode(["string"], ["x"])
