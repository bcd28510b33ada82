"""The console's HTTP face: off without admin keys, refused without a login (and with an ordinary
API key), a login that holds a session, and the admin API driven with that session."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from blueprint.balancer import Balancer
from blueprint.llm.config import NodeConfig
from blueprint.llm.registry import create_client
from blueprint.server import ServerSettings, create_app
from blueprint.server.console.sessions import TOKEN_HEADER
from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions

USER_KEY = "sk-user-0123456789"
ADMIN_KEY = "sk-admin-9876543210"


@pytest.fixture
async def backend() -> AsyncIterator[EmulatedBackend]:
    emulated = EmulatedBackend(EmulatedOptions(model="emu"))
    await emulated.start()
    try:
        yield emulated
    finally:
        await emulated.stop()


async def _client(backend: EmulatedBackend | None, **server: object) -> tuple[TestClient, Balancer]:
    configs = [] if backend is None else [
        NodeConfig(name="emu-a", engine="openai", model="emu", base_url=backend.base_url),
        NodeConfig(name="emu-b", engine="openai", model="emu", base_url=backend.base_url),
    ]
    balancer = Balancer([create_client(c) for c in configs], node_configs={c.node_name: c for c in configs})
    await balancer.start()
    app = create_app(balancer, ServerSettings(**server))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, balancer


async def _login(client: TestClient, key: str) -> str:
    response = await client.post("/console/login", data={"key": key}, allow_redirects=False)
    assert response.status == 303, await response.text()
    page = await client.get("/")
    assert page.status == 200
    found = re.search(r'name="console-token" content="([^"]+)"', await page.text())
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("server", [{}, {"api_keys": [USER_KEY]},
                                    {"admin_keys": [ADMIN_KEY], "console": {"enabled": False}},
                                    {"admin_keys": [ADMIN_KEY], "workers": 2}])
async def test_console_is_off_without_admin_keys_or_when_disabled(server: dict[str, object]) -> None:
    client, balancer = await _client(None, **server)
    try:
        for path in ("/", "/console/api/state", "/console/static/console.js"):
            assert (await client.get(path)).status == 404, path
        login = await client.post("/console/login", data={"key": ADMIN_KEY})
        assert login.status in (404, 405)
    finally:
        await client.close()
        await balancer.close()


async def test_console_refused_without_login_and_with_an_ordinary_key(backend: EmulatedBackend) -> None:
    client, balancer = await _client(backend, api_keys=[USER_KEY], admin_keys=[ADMIN_KEY])
    try:
        page = await client.get("/")
        assert page.status == 401
        assert "Admin key" in await page.text() and "emu-a" not in await page.text()
        for headers in ({}, {"Authorization": f"Bearer {USER_KEY}"}, {"Authorization": "Bearer nope"}):
            state = await client.get("/console/api/state", headers=headers)
            assert state.status == 401, headers
            assert (await state.json())["error"]["code"] == "console_login_required"
            assert (await client.get("/console/static/console.js", headers=headers)).status == 401
            assert (await client.get("/", headers=headers)).status == 401
        refused = await client.post("/console/login", data={"key": USER_KEY}, allow_redirects=False)
        assert refused.status == 401 and "not an admin key" in await refused.text()
        assert "bp_console" not in refused.cookies
        # the admin key as a Bearer header reads the JSON too (scripts, curl)
        state = await client.get("/console/api/state", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert state.status == 200
        assert [n["name"] for n in (await state.json())["nodes"]] == ["emu-a", "emu-b"]
    finally:
        await client.close()
        await balancer.close()


async def test_login_session_reads_state_and_drives_the_admin_api(backend: EmulatedBackend) -> None:
    client, balancer = await _client(backend, api_keys=[USER_KEY], admin_keys=[ADMIN_KEY])
    try:
        token = await _login(client, ADMIN_KEY)
        # the cookie alone is not enough for API calls: the page token must come with it
        assert (await client.get("/console/api/state")).status == 401
        assert (await client.post("/admin/nodes/emu-a/drain")).status == 401
        headers = {TOKEN_HEADER: token}
        state = await (await client.get("/console/api/state", headers=headers)).json()
        node = {n["name"]: n for n in state["nodes"]}["emu-a"]
        assert node["engine"] == "openai" and node["health"] == "closed" and node["draining"] is False
        assert state["engines"] and "transformers" in state["engines"]
        assert [m["id"] for m in state["models"]] == ["emu"]
        assert state["chain"] is None and "t" in state["series"]
        assert (await client.get("/console/static/uPlot.iife.min.js")).status == 200
        assert (await client.get("/console/static/nope.js")).status == 404
        drained = await client.post("/admin/nodes/emu-a/drain", headers=headers)
        assert drained.status == 200, await drained.text()
        state = await (await client.get("/console/api/state", headers=headers)).json()
        assert {n["name"]: n for n in state["nodes"]}["emu-a"]["draining"] is True
        removed = await client.delete("/admin/nodes/emu-b", headers=headers)
        assert removed.status == 200
        assert (await client.post("/console/logout", headers=headers)).status == 200
        assert (await client.get("/console/api/state", headers=headers)).status == 401
        assert (await client.get("/")).status == 401
    finally:
        await client.close()
        await balancer.close()


async def test_prefix_cache_hit_rate_per_node_from_a_vllm_style_backend(backend: EmulatedBackend) -> None:
    """An ``openai`` node reads vLLM's prefix-cache counters from its backend's /metrics; the
    console charts their hit rate per node."""
    from blueprint.server.console import CONSOLE_KEY, Console

    client, balancer = await _client(backend, admin_keys=[ADMIN_KEY])
    try:
        console = client.server.app[CONSOLE_KEY]
        assert isinstance(console, Console)
        await balancer.refresh_metrics()
        console.sampler.sample()
        system = "You are a careful assistant. " * 40
        for i in range(6):
            chat = {"model": "emu", "max_tokens": 2,
                    "messages": [{"role": "system", "content": system}, {"role": "user", "content": f"q{i}"}]}
            assert (await client.post("/v1/chat/completions", json=chat)).status == 200
        await balancer.refresh_metrics()
        rows = {row["name"]: row for row in console.node_rows()}
        assert rows["emu-a"]["prefix_cache_queries"] > 0
        console.sampler.sample()
        rates = console.sampler.series()["prefix_cache_hit_rate"]
        assert set(rates) == {"emu-a", "emu-b"}
        assert 0.5 < rates["emu-a"][-1] < 1.0  # one backend behind both nodes: the same counters
    finally:
        await client.close()
        await balancer.close()
