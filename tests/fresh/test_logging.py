"""Logs go to stderr, one event per line whoever emits it (structlog, the standard ``logging`` of
web3 or transformers, Python warnings, exceptions), in JSON or one pretty line; chatty libraries
stay quiet unless -vv; prompts and results are hidden unless content logging is on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.fresh.cli_support import REPO

EMIT = """
import logging, sys, warnings
import structlog
from blueprint.logging import configure_logging
configure_logging(int(sys.argv[1]), pretty=sys.argv[2] == "pretty", log_content=sys.argv[3] == "content")
log = structlog.get_logger("t")
log.info("job.done", call_id=7, prompt="tell me a secret", messages=[{"role": "user"}])
logging.getLogger("web3.providers").info("Successfully disconnected from: http://x")
logging.getLogger("somelib").warning("something odd\\nover two lines")
warnings.warn("old api", DeprecationWarning, stacklevel=1)
try:
    raise RuntimeError("boom")
except RuntimeError:
    log.exception("job.failed", call_id=8)
"""


def emit(verbosity: int, mode: str, content: str = "hidden") -> tuple[list[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("BLUEPRINT_LOG_CONTENT", None)
    proc = subprocess.run([sys.executable, "-c", EMIT, str(verbosity), mode, content], capture_output=True,
                          text=True, env=env, timeout=60, check=True)
    return proc.stderr.splitlines(), proc.stdout


def test_json_mode_is_one_event_per_line_on_stderr() -> None:
    lines, stdout = emit(0, "json")
    assert stdout == ""
    events = [json.loads(line) for line in lines]  # every line one JSON event
    done, odd, warned, failed = events
    assert (done["event"], odd["event"], failed["event"]) == ("job.done", "something odd\nover two lines",
                                                              "job.failed")
    assert done["prompt"].startswith("<16 hidden") and "tell me" not in lines[0]
    assert odd["level"] == "warning" and odd["logger"] == "somelib"
    assert "DeprecationWarning: old api" in warned["event"] and warned["logger"] == "py.warnings"
    assert failed["call_id"] == 8 and "RuntimeError: boom" in failed["exception"]


def test_chatty_libraries_speak_with_vv_and_content_with_the_flag() -> None:
    lines, _ = emit(2, "json", "content")
    events = [json.loads(line) for line in lines]
    assert any(e["event"].startswith("Successfully disconnected") for e in events)
    assert events[0]["prompt"] == "tell me a secret"


def test_pretty_mode_is_one_line_per_event_too() -> None:
    lines, stdout = emit(0, "pretty")
    assert stdout == "" and len(lines) == 4
    assert "job.failed" in lines[3] and "exc='RuntimeError: boom'" in lines[3]
    assert "something odd\\nover two lines" in lines[1]
