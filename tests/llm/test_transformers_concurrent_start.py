"""Two transformers nodes started at once in a fresh process both start: the first import of
``transformers`` from two threads at the same time must not fail one of them (its lazy module
is not safe to import concurrently; ``serve`` with two in-process nodes hit this, found through
the console showing the second node open with "not started")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from blueprint.llm.config import NodeConfig
    from blueprint.llm.engines.transformers import TransformersClient

    async def main():
        clients = [TransformersClient(NodeConfig(name=f"n{i}", engine="transformers", model="tiny",
                                                 path=sys.argv[1], device="cpu", dtype="float32"))
                   for i in range(3)]
        results = await asyncio.gather(*(c.start() for c in clients), return_exceptions=True)
        for client in clients:
            await client.close()
        failed = [repr(r) for r in results if isinstance(r, BaseException)]
        print("FAILED" if failed else "OK", *failed)

    asyncio.run(main())
""")


def test_nodes_started_together_all_start(tiny_model_dir: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir)], capture_output=True,
                          text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "OK", done.stdout
