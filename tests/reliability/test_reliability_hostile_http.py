"""Hostile HTTP requests and upstreams against the real ``serve`` command (issue 11): one request,
one key holder or one upstream must never take the server down or fail other users' work."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from reliability_support import API_KEY, MODEL, BackendProcess, ServeProcess

from blueprint.devstack import write_config

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Factory: ``serve(nodes, *args, env=None)`` starts the real command; stopped after."""
    made: list[ServeProcess] = []

    def start(nodes: list[dict[str, Any]], *args: str, env: dict[str, str] | None = None) -> ServeProcess:
        config = write_config(tmp_path / f"serve-{len(made)}.toml", nodes)
        proc = ServeProcess(config, tmp_path / f"serve-{len(made)}.log", *args,
                            env={"API_KEYS": API_KEY, **(env or {})})
        made.append(proc)
        return proc.start()

    yield start
    for proc in made:
        proc.stop()


def test_upstream_error_body_nested_90000_deep_is_an_error_not_a_crash(
        serve: Callable[..., ServeProcess], backend_process: Callable[..., BackendProcess]) -> None:
    hostile = backend_process("--trivial", "--fail-rate", "1", "--fail-status", "400",
                              "--error-nesting", "90000")
    server = serve([{"name": "hostile", "engine": "openai", "model": MODEL, "base_url": hostile.base_url}])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        reply = client.post("/v1/chat/completions", headers=AUTH, json=CHAT)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["message"]
        streamed = client.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "stream": True})
        assert streamed.status_code == 400
        assert client.get("/health").status_code == 200
    assert server.alive()
