"""The nodes file end to end: a real ``openai`` node written into ``balancer.nodes_file`` (pointing
at the emulated backend on loopback) starts serving through the HTTP API, both under the daemon's
context and under ``python -m blueprint serve``'s entry point, and stops when removed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from blueprint.balancer import BalancerSettings
from blueprint.commands.serve import serve_settings
from blueprint.config import Settings
from blueprint.context.context import Context
from blueprint.server import ServerSettings, start_server
from blueprint.server.runner import free_port
from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions

MODEL = "file-model"


@pytest.fixture
async def backend() -> AsyncIterator[EmulatedBackend]:
    server = EmulatedBackend(EmulatedOptions(model=MODEL, trivial=True))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def write_nodes(path: Path, base_url: str | None) -> None:
    table = ("" if base_url is None else
             f'[[nodes]]\nname = "live"\nengine = "openai"\nmodel = "{MODEL}"\nbase_url = "{base_url}"\n')
    path.write_text(table)


def settings_for(nodes_file: Path, port: int = 0) -> Settings:
    return Settings(nodes=[], server=ServerSettings(port=port),
                    balancer=BalancerSettings(nodes_file=nodes_file, watch_interval_s=0.05))


async def chat_status(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        data = await response.json()
        content = data["choices"][0]["message"]["content"] if response.status == 200 else ""
        return response.status, content


async def wait_status(session: aiohttp.ClientSession, url: str, status: int) -> str:
    """Poll until the API answers ``status`` (the watcher polls every 50 ms); bounded at 10 s."""
    seen = None
    for _ in range(200):
        seen, content = await chat_status(session, url)
        if seen == status:
            return content
        await asyncio.sleep(0.05)
    raise AssertionError(f"the API kept answering {seen}, not {status}")


async def test_context_watches_nodes_file(tmp_path: Path, backend: EmulatedBackend) -> None:
    nodes_file = tmp_path / "nodes.toml"
    write_nodes(nodes_file, None)
    ctx = await Context.create(settings_for(nodes_file), with_chain=False)
    try:
        assert ctx.watcher is not None
        server = await start_server(ctx.balancer, ctx.settings.server)
        try:
            async with aiohttp.ClientSession() as session:
                assert (await chat_status(session, server.url))[0] == 404
                write_nodes(nodes_file, backend.base_url)
                assert await wait_status(session, server.url, 200)  # the emulated backend's words
                assert [n.name for n in ctx.balancer.nodes()] == ["live"]
                write_nodes(nodes_file, None)
                await wait_status(session, server.url, 404)
        finally:
            await server.close()
    finally:
        await ctx.close()
    assert ctx.watcher is None  # closed with the context


async def test_serve_command_watches_nodes_file(tmp_path: Path, backend: EmulatedBackend) -> None:
    nodes_file = tmp_path / "nodes.toml"
    write_nodes(nodes_file, backend.base_url)
    port = free_port()
    task = asyncio.create_task(serve_settings(settings_for(nodes_file, port)))
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # until the server listens
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(f"{url}/health"):
                        break
                assert not task.done(), task
                await asyncio.sleep(0.05)
            assert await wait_status(session, url, 200)
            write_nodes(nodes_file, None)
            await wait_status(session, url, 404)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
