"""The pooled JSON-RPC transport: connections are kept and reused, a restarted node is reached
again, raw calls return the node's JSON and errors keep their error object."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from web3 import AsyncHTTPProvider
from web3.exceptions import Web3RPCError

from blueprint.bounded import AnswerTooLargeError
from blueprint.devnet.anvil import free_port
from blueprint.tangle.rpc import PooledHTTPProvider, lean_web3, raw_request, rpc_error_of
from tests import loopback


@dataclass
class FakeNode:
    """A JSON-RPC node on loopback that answers ``eth_blockNumber`` and ``eth_call`` (a revert)
    and records the client port of every request: one port per TCP connection."""

    port: int = field(default_factory=free_port)
    peers: list[int] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)  # of each answer without end: "cut" or not
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(int(peer[1]) if peer else -1)
        body = await request.json()
        if body["method"] == "eth_getLogs":  # an answer without end (a broken or hostile node)
            return await self.pour(request)
        if body["method"] == "eth_call":
            error = {"code": 3, "message": "execution reverted", "data": "0x08c379a0"}
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "error": error})
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": hex(100 + len(self.peers))})

    async def pour(self, request: web.Request) -> web.StreamResponse:
        return await loopback.pour(request, b'{"jsonrpc": "2.0", "id": 1, "result": [', b'"0x00",' * 2048,
                                   self.outcomes)  # 64 MiB

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def node() -> AsyncIterator[FakeNode]:
    fake = FakeNode()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def test_requests_reuse_one_keep_alive_connection(node: FakeNode) -> None:
    w3 = lean_web3(PooledHTTPProvider(node.url))
    try:
        for _ in range(20):
            await w3.eth.block_number
        await asyncio.gather(*(w3.eth.block_number for _ in range(8)))
    finally:
        await w3.provider.disconnect()
    assert len(node.peers) == 28
    assert len(set(node.peers)) <= 8  # at most one connection per concurrent request, reused


async def test_web3_default_provider_opens_a_connection_per_request(node: FakeNode) -> None:
    """Why PooledHTTPProvider exists (if web3.py ever pools by default, this test says so)."""
    w3 = lean_web3(AsyncHTTPProvider(node.url))
    try:
        for _ in range(10):
            await w3.eth.block_number
    finally:
        await w3.provider.disconnect()
    assert len(set(node.peers)) == 10


async def test_a_restarted_node_is_reached_again(node: FakeNode) -> None:
    w3 = lean_web3(PooledHTTPProvider(node.url, request_kwargs={"timeout": 5}))
    try:
        assert await w3.eth.block_number > 0
        await node.stop()
        with pytest.raises(Exception):  # noqa: B017 (connection refused: aiohttp's error type)
            await raw_request(w3, "eth_blockNumber", [])
        await node.start()
        assert await w3.eth.block_number > 0  # the dead pooled connection is not reused
    finally:
        await w3.provider.disconnect()


async def test_raw_request_returns_node_json_and_keeps_the_error_object(node: FakeNode) -> None:
    w3 = lean_web3(PooledHTTPProvider(node.url))
    try:
        assert (await raw_request(w3, "eth_blockNumber", [])).startswith("0x")
        with pytest.raises(Web3RPCError) as caught:
            await raw_request(w3, "eth_call", [{"to": "0x" + "00" * 20, "data": "0x"}, "latest"])
    finally:
        await w3.provider.disconnect()
    assert "execution reverted" in str(caught.value)
    assert rpc_error_of(caught.value)["data"] == "0x08c379a0"
    assert json.loads(json.dumps(rpc_error_of(caught.value)))["code"] == 3


async def test_an_answer_over_the_bound_is_cut_and_the_next_call_is_served(node: FakeNode) -> None:
    """A node that answers without end cannot take the daemon's memory: the read stops at the
    bound (the node is still writing when we close), the error reads as a response size limit
    (the producer halves its ``eth_getLogs`` range on it), and the provider serves on."""
    w3 = lean_web3(PooledHTTPProvider(node.url, request_kwargs={"timeout": 5}, max_answer_bytes=256 * 1024))
    try:
        with pytest.raises(AnswerTooLargeError, match=r"over 256 KiB \(a response size limit\)"):
            await raw_request(w3, "eth_getLogs", [{}])
        for _ in range(200):  # the node learns of the close at its next write (bounded: 2 s)
            if node.outcomes:
                break
            await asyncio.sleep(0.01)
        assert node.outcomes == ["cut"]
        assert (await raw_request(w3, "eth_blockNumber", [])).startswith("0x")
    finally:
        await w3.provider.disconnect()


def test_one_provider_serves_several_event_loops() -> None:
    """A provider disconnected on one loop and used again on the next gets a session of the new
    loop (a session is bound to the loop that created it)."""
    node = FakeNode()
    provider = PooledHTTPProvider(node.url)
    w3 = lean_web3(provider)

    async def once() -> int:
        await node.start()
        try:
            return int(await w3.eth.block_number)
        finally:
            await provider.disconnect()
            await node.stop()

    assert asyncio.run(once()) > 0
    assert asyncio.run(once()) > 0


def test_rpc_replies_are_parsed_with_the_depth_bound() -> None:
    """Row 1 (RPC data): a node's reply nested 100,000 deep is an error from both providers the
    daemon uses, not a crash of the process (web3 parses with ``json.loads``)."""
    import asyncio as _asyncio

    from blueprint.tangle.rpc import NodeSubscriptions, PooledHTTPProvider

    deep = b'{"jsonrpc":"2.0","id":1,"result":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ValueError, match="nested deeper"):
        PooledHTTPProvider("http://127.0.0.1:9").decode_rpc_response(deep)

    class _Socket:
        async def recv(self) -> bytes:
            return deep

    async def first_notification() -> object:
        async for item in subscriptions.notifications():
            return item
        return None

    subscriptions = NodeSubscriptions("ws://127.0.0.1:9")
    subscriptions._ws = _Socket()  # type: ignore[assignment]
    with pytest.raises(ValueError, match="nested deeper"):
        _asyncio.run(first_notification())


@pytest.mark.chain
async def test_subscriptions_deliver_the_nodes_json_unformatted(anvil) -> None:  # type: ignore[no-untyped-def]
    """Heads come as the node sent them (hex strings, no web3 formatting); a subscription the
    node refuses is an error that names it."""
    from blueprint.tangle.rpc import NodeSubscriptions

    async with NodeSubscriptions(anvil.ws_url) as node:
        heads = await node.subscribe("newHeads")
        with pytest.raises(Web3RPCError, match="eth_subscribe nonsense"):
            await node.subscribe("nonsense")
        anvil.rpc("anvil_mine", [1])
        async with asyncio.timeout(5):
            async for sub, result in node.notifications():
                assert sub == heads
                assert isinstance(result["hash"], str) and result["hash"].startswith("0x")
                assert isinstance(result["number"], str)
                break
