"""JSON from untrusted sources (job inputs, HTTP bodies, upstream servers, RPC replies), parsed
with a nesting bound that cannot crash the process.

Why not ``json.loads``: importing web3 / eth_account (py_ecc) raises Python's recursion limit to
100,000, so the standard library's recursive parser overflows the C stack on a document nested
tens of thousands deep: a segfault, not a ``RecursionError``. One such on-chain job crashed the
daemon on every restart. pydantic-core's parser (jiter, in Rust) stops at :data:`MAX_DEPTH`
levels with an ordinary ``ValueError``, whatever the interpreter's recursion limit, and is faster.

Call :func:`loads` wherever the text comes from outside the process; ``model_validate_json`` of
a pydantic model uses the same parser and is safe too.
"""

from __future__ import annotations

from typing import Any

import pydantic_core

#: Deepest nesting accepted (pydantic-core's fixed recursion limit). Real requests nest a handful
#: of levels (a JSON schema of tool parameters maybe a few dozen).
MAX_DEPTH = 200


def loads(data: str | bytes | bytearray) -> Any:
    """Parse JSON text like ``json.loads``; a document nested deeper than :data:`MAX_DEPTH`, or
    not JSON at all, raises ``ValueError`` (never a crash)."""
    try:
        return pydantic_core.from_json(data)
    except ValueError as exc:
        message = str(exc)
        if "recursion limit" in message:
            raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels ({message})") from None
        raise ValueError(f"invalid JSON: {message}") from None
