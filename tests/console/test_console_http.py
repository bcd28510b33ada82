"""The console's HTTP face: off without admin keys, refused without a login (and with an ordinary
API key), a login that holds a session, and the admin API driven with that session."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
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


async def _client(backend: EmulatedBackend | None,
                  hook: Callable[[web.Application, Balancer], None] | None = None,
                  **server: object) -> tuple[TestClient, Balancer]:
    configs = [] if backend is None else [
        NodeConfig(name="emu-a", engine="openai", model="emu", base_url=backend.base_url),
        NodeConfig(name="emu-b", engine="openai", model="emu", base_url=backend.base_url),
    ]
    balancer = Balancer([create_client(c) for c in configs], node_configs={c.node_name: c for c in configs})
    await balancer.start()
    app = create_app(balancer, ServerSettings(**server))
    if hook is not None:  # what the daemon attaches before the app starts
        hook(app, balancer)
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


async def test_state_lists_quotes_signed_and_jobs_shared_with_other_operators(
        backend: EmulatedBackend, tmp_path: Path) -> None:
    """``run``'s console: the quotes this node signed (newest first) and the chain panel's jobs
    taken over by us, answered by another operator, skipped and on standby, from a real ledger
    whose multi-operator states are set directly (the three-operator run is tests/e2e)."""
    from eth_account import Account

    from blueprint.config import Settings
    from blueprint.context.console_chain import LedgerChainView
    from blueprint.quoting.quoter import quoter_from_settings
    from blueprint.server.console import attach_chain_view, attach_quote_log
    from blueprint.server.quote_route import enable_quotes
    from blueprint.tangle.ledger import JobState, Ledger
    from blueprint.tangle.types import JobCall

    account = Account.create()
    node = NodeConfig(name="emu-a", engine="openai", model="emu", base_url=backend.base_url)
    settings = Settings(nodes=[node], service_id=1)
    ledger = await Ledger.open(tmp_path)

    def as_run_does(app: web.Application, balancer: Balancer) -> None:
        quoter = quoter_from_settings(settings, balancer, account, 31337)
        enable_quotes(app, quoter)
        attach_quote_log(app, quoter)
        attach_chain_view(app, LedgerChainView(ledger, 1, account.address, None, settings.tangle_contract))

    client, balancer = await _client(backend, as_run_does, api_keys=[USER_KEY], admin_keys=[ADMIN_KEY])
    try:
        await ledger.record_seen([JobCall(service_id=1, call_id=i, job_index=0, caller=account.address,
                                          inputs=b"in", block_number=10 + i, block_hash=f"0x{i:064x}",
                                          log_index=0, tx_hash=f"0x{i:064x}") for i in range(1, 5)])
        for call_id in (1, 2, 3):
            await ledger.transition(1, call_id, JobState.STANDBY, reason="our turn in 5s")
        await ledger.transition(1, 1, JobState.TAKEN_OVER, reason="no result after 5s")
        await ledger.mark_running(1, 1)
        await ledger.transition(1, 2, JobState.ANSWERED_BY_ANOTHER, reason="JobCompleted")
        await ledger.transition(1, 4, JobState.SKIPPED, reason="model not offered")

        requester = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
        for max_tokens in (5, 7):
            body = {"service_id": 1, "job_index": 0, "model": "emu", "max_tokens": max_tokens,
                    "request": {"messages": [{"role": "user", "content": "hi"}]}, "requester": requester}
            signed = await client.post("/v1/quote", json=body,
                                       headers={"Authorization": f"Bearer {USER_KEY}"})
            assert signed.status == 200, await signed.text()
        state = await (await client.get("/console/api/state",
                                        headers={"Authorization": f"Bearer {ADMIN_KEY}"})).json()
        recent = state["quotes"]["recent"]
        assert [q["max_tokens"] for q in recent] == [7, 5]  # newest first
        assert recent[0]["model"] == "emu" and recent[0]["requester"] == requester
        assert recent[0]["prompt_tokens"] > 0 and int(recent[0]["price_wei"]) >= 0
        assert recent[0]["expiry"] > recent[0]["time"]
        chain = state["chain"]
        assert chain["sharing"] == {"taken_over": 1, "answered_by_another": 1, "skipped": 1, "standby": 1}
        jobs = {job["call_id"]: job for job in chain["jobs"]}
        assert [job["call_id"] for job in chain["jobs"]] == [4, 3, 2, 1]
        assert jobs[1]["state"] == "running" and jobs[1]["taken_over"] is True
        assert jobs[2]["state"] == "answered_by_another" and jobs[2]["answered_by"] == "another operator"
        assert jobs[3]["state"] == "standby" and jobs[3]["answered_by"] is None
        assert jobs[4]["state"] == "skipped" and not jobs[4]["taken_over"]
    finally:
        await ledger.close()
        await client.close()
        await balancer.close()


def test_recent_quotes_ring_is_bounded_and_newest_first() -> None:
    from blueprint.quoting.quoter import RecentQuotes

    ring = RecentQuotes(size=3)
    for i in range(5):
        ring.add({"max_tokens": i})
    assert [q["max_tokens"] for q in ring.recent_quotes(10)] == [4, 3, 2]
    assert [q["max_tokens"] for q in ring.recent_quotes(1)] == [4]
