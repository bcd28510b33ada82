"""The depth-bounded JSON parser every untrusted source goes through (``blueprint/safejson.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blueprint import safejson

REPO_ROOT = Path(__file__).resolve().parents[1]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30)


@given(value=json_values)
def test_reads_what_the_standard_library_reads(value: Any) -> None:
    text = json.dumps(value)
    assert safejson.loads(text) == json.loads(text)
    assert safejson.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("text", ["", "{", "[1,]", "nope", '{"a":1}x', "\xff"])
def test_malformed_text_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        safejson.loads(text)


def test_nesting_past_the_bound_is_a_value_error_even_after_web3_raised_the_recursion_limit() -> None:
    """In a fresh interpreter that imported web3 (recursion limit 100,000): ``json.loads`` of this
    document kills the process with SIGSEGV; ``safejson.loads`` raises ``ValueError``."""
    script = (
        "import sys, web3\n"
        "assert sys.getrecursionlimit() >= 100_000\n"
        "from blueprint import safejson\n"
        "depth = safejson.MAX_DEPTH\n"
        "assert safejson.loads('[' * depth + ']' * depth) is not None\n"
        "for doc in ('[' * 100_000, '[' * 100_000 + ']' * 100_000, '{\"a\":' * 100_000):\n"
        "    try:\n"
        "        safejson.loads(doc)\n"
        "    except ValueError as exc:\n"
        "        assert 'nested deeper' in str(exc), exc\n"
        "    else:\n"
        "        raise SystemExit('accepted')\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])
