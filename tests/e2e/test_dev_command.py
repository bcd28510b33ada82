"""``dev`` as a user meets it: a bad ``--model`` is refused before anything starts, and while it
serves, the commands it prints (list the operators, submit a job, get a quote, pay a quote) work
when pasted into a shell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.devnet_support import require_devnet

pytestmark = [pytest.mark.chain, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_an_empty_model_folder_stops_dev_at_once(tmp_path: Path) -> None:
    empty = tmp_path / "model"
    empty.mkdir()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "blueprint", "dev", "--smoke", "--dir",
                           str(tmp_path / "dev"), "--model", str(empty)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --model {empty} has no config.json: point it at a Hugging Face model folder "
        "(config.json, weights and tokenizer files).")
    assert "start anvil" not in proc.stdout  # refused before the chain started
    assert time.monotonic() - started < 60


def test_printed_commands_work_against_the_running_stack(tmp_path: Path, tiny_model_dir: Path) -> None:
    require_devnet()
    out = tmp_path / "dev.out"
    with open(out, "w") as sink:
        dev = subprocess.Popen(
            [sys.executable, "-m", "blueprint", "dev", "--dir", str(tmp_path / "dev"), "--model",
             str(tiny_model_dir), "--model-id", "tiny", "--device", "cpu", "--timeout", "90", "--port",
             str(_free_pair())],
            stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        text = _wait_for(out, "serving; Ctrl-C to stop", dev, 240)
        block = text.split("Try it from another terminal")[1].split("serving;")[0]
        commands = [line.strip() for line in block.splitlines() if line.startswith("  ") and
                    not line.strip().startswith("#")]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        shell = "\n".join(commands).replace("python -m blueprint", f"{sys.executable} -m blueprint")
        # every command on its own, in one shell so the exports carry over
        script = "set -e\n" + "\n".join(f"{c} > {tmp_path}/cmd{i}.out 2>&1" if not c.startswith("export")
                                        else c for i, c in enumerate(shell.splitlines()))
        done = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, timeout=240)
        outputs = {i: (tmp_path / f"cmd{i}.out").read_text() for i in range(len(commands))
                   if (tmp_path / f"cmd{i}.out").exists()}
        assert done.returncode == 0, outputs
        operators = [json.loads(line) for line in outputs[2].splitlines() if line.startswith("{")]
        assert len(operators) == 2 and {len(o["models"]) for o in operators} == {1, 2}
        submitted, result = [json.loads(line) for line in outputs[3].splitlines() if line.startswith("{")]
        assert submitted["call_id"] >= 4 and "error" not in result and result["choices"]
        quote = json.loads(outputs[4])
        assert int(quote["price_wei"]) > 0 and quote["quote"]["signature"].startswith("0x")
        paid, paid_result = [json.loads(line) for line in outputs[5].splitlines() if line.startswith("{")]
        assert paid["price"] > 0 and "error" not in paid_result
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(60)
        except subprocess.TimeoutExpired:
            dev.kill()
            dev.wait()


def _free_pair() -> int:
    """A port whose next one is free too (dev gives operator B the port after A's)."""
    import socket

    from blueprint.devnet.anvil import free_port

    while True:
        port = free_port()
        if port >= 65000:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def _wait_for(path: Path, marker: str, proc: subprocess.Popen[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        if marker in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"dev exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.5)
    tail = path.read_text(errors="replace")[-3000:]
    raise AssertionError(f"no {marker!r} within {timeout}s:\n{tail}")
