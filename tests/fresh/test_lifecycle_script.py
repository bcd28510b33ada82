"""``scripts/lifecycle.sh`` on a fresh devnet: keys import -> deploy -> register -> service
request -> service approve -> run -> submit, with the documented commands alone, ends in the
operator's answer read back from chain. Every command's stdout is its JSON result alone, and the
daemon's log is one JSON event per line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blueprint.devnet.anvil import free_port
from tests.devnet_support import devnet_anvil
from tests.fresh.cli_support import REPO

pytestmark = [pytest.mark.chain, pytest.mark.slow]


def test_the_whole_lifecycle_with_documented_commands(tmp_path: Path, tiny_model_dir: Path) -> None:
    work = tmp_path / "work"
    with devnet_anvil() as anvil:
        env = {**os.environ, "HTTP_RPC_URL": anvil.http_url, "PORT": str(free_port()), "WORK": str(work),
               "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        for name in ("BLUEPRINT_CONFIG", "SERVICE_ID", "KEYSTORE_URI", "OWNER_KEY", "OPERATOR_KEY"):
            env.pop(name, None)
        proc = subprocess.run(["bash", str(REPO / "scripts" / "lifecycle.sh"), str(tiny_model_dir), "tiny"],
                              capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + (work / "daemon.log").read_text()[-3000:]
    steps = {name: (work / f"{name}.json").read_text() for name in
             ("keys", "deploy", "register", "request", "approve")}
    for name, text in steps.items():
        assert text.count("\n") == 1, (name, text)  # one JSON object, no log line
        json.loads(text)
    approved = json.loads(steps["approve"])
    assert approved["active"] is True and isinstance(approved["service_id"], int)
    submitted, answer = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert submitted["service_id"] == approved["service_id"]
    assert answer["object"] == "chat.completion" and answer["model"] == "tiny"
    assert 1 <= answer["usage"]["completion_tokens"] <= 8
    log_lines = (work / "daemon.log").read_text().splitlines()
    events = [json.loads(line) for line in log_lines]  # every line is one JSON event
    assert any(e["event"] == "daemon.ready" for e in events)
    assert any(e["event"] == "daemon.job_done" and e.get("status") == "confirmed" for e in events)
    assert (work / "daemon.out").read_text() == ""  # the daemon writes nothing to stdout
