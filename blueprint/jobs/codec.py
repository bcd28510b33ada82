"""The on-chain codec of this blueprint's jobs (DESIGN.md section 4).

Inputs are ``abi.encode(string model, uint32 maxTokens, string request)`` where ``request`` is the
OpenAI-compatible request body as JSON, the same body the HTTP API takes. A result is
``abi.encode(string response)``: the response JSON, or an OpenAI-style error object. Plain
Solidity ABI encodings, because the on-chain ``paramsSchema``/``resultSchema`` are empty and this
is what the Rust SDK's ``TangleArg``/``TangleResult`` produce, so any client can build them.

Clients (tests, ``dev``, the benchmark, other programs) use :func:`encode_inputs` and
:func:`decode_result`; the daemon uses :func:`decode_inputs` and :func:`encode_result`.

Who answers: in a service of several operators, one result completes a job, and it comes from the
first operator of the job's ranking that can serve its ``model`` (the quoted operators only, for
a job paid by quotes; see ``blueprint.tangle.assignment``), or from the next one when the first
gives no result in time. An error object is final for the caller, so it answers only permanent
problems (inputs that do not decode, bad JSON, an unknown model, too long a prompt, bad
parameters); a passing one (busy or unhealthy nodes, an engine failure) is retried until the
job's deadline, and the last operator of the ranking answers with the error only then. What was
paid is read on chain: the manager refuses, in ``onJobCall``, a flat-rate job whose payment does
not cover ``maxTokens`` at the cheapest able operator's completion price; per-token prices are
charged through quotes (``submitJobFromQuote``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from pydantic import BaseModel

from blueprint import safejson
from blueprint.errors import InvalidRequestError

INPUT_TYPES = ("string", "uint32", "string")
RESULT_TYPES = ("string",)
UINT32_MAX = 2**32 - 1


class JobIndex(IntEnum):
    """The job indices of this blueprint's on-chain definition."""

    CHAT = 0
    COMPLETION = 1
    EMBEDDINGS = 2


@dataclass(frozen=True, slots=True)
class JobInputs:
    """Decoded job inputs: the model paid for, the paid token ceiling, the request JSON text."""

    model: str
    max_tokens: int
    request: str


def encode_inputs(model: str, max_tokens: int, request: str | dict[str, Any] | BaseModel) -> bytes:
    """ABI-encode job inputs. ``request`` may be JSON text, a dict or a wire-type model."""
    if not 0 <= max_tokens <= UINT32_MAX:
        raise ValueError(f"max_tokens must fit in uint32, got {max_tokens}")
    return abi_encode(list(INPUT_TYPES), [model, max_tokens, _json_text(request)])


def decode_inputs(data: bytes) -> JobInputs:
    """Decode job inputs; anything malformed is an :class:`InvalidRequestError` (answered on chain)."""
    try:
        model, max_tokens, request = abi_decode(list(INPUT_TYPES), bytes(data), strict=True)
    except Exception as exc:  # eth_abi raises several unrelated types for bad bytes
        raise InvalidRequestError(
            "Malformed job inputs: expected abi.encode(string model, uint32 maxTokens, string request) "
            f"({type(exc).__name__}: {exc})",
            code="malformed_inputs",
        ) from None
    return JobInputs(model=model, max_tokens=int(max_tokens), request=request)


def encode_result(response: str | dict[str, Any] | BaseModel) -> bytes:
    """ABI-encode a result: response JSON (text, dict or wire model) as ``abi.encode(string)``."""
    return abi_encode(list(RESULT_TYPES), [_json_text(response)])


def _json_text(value: str | dict[str, Any] | BaseModel) -> str:
    """Compact JSON of a wire model or dict; text is taken as already JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump_json(exclude_none=True)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return value


def decode_result(data: bytes) -> str:
    """The response JSON text of an encoded result (a ``JobResultSubmitted`` output)."""
    (text,) = abi_decode(list(RESULT_TYPES), bytes(data), strict=True)
    return text


def decode_result_json(data: bytes) -> dict[str, Any]:
    """The decoded result as a dict: a response object or ``{"error": {...}}``."""
    return safejson.loads(decode_result(data))
