"""JSON-RPC transport for web3.py: pooled keep-alive HTTP and a lean middleware stack.

Why this module exists: measured on anvil during a burst of 200 jobs, a fifth of the daemon's
event-loop time went into web3.py's HTTP plumbing rather than into our work:

* ``AsyncHTTPProvider`` builds its aiohttp session with ``TCPConnector(force_close=True)``: every
  RPC opens a new TCP connection (and resolves the host name on a thread), then closes it;
* every request takes the session cache's *threading* lock through a thread-pool hop
  (``async_lock``), even when the session is already cached;
* the default middleware's validation layer asks the node for ``eth_chainId`` before every
  ``eth_call`` (an extra round trip per simulation), next to ENS and gas layers we never use.

:class:`PooledHTTPProvider` keeps web3's request encoding, response decoding, request caching and
retry semantics, and replaces only the transport: one keep-alive ``ClientSession`` per event loop,
created lazily on the loop that uses it. :func:`lean_web3` drops the middleware we do not need.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3._utils.http import DEFAULT_HTTP_TIMEOUT
from web3.exceptions import ProviderConnectionError, Web3RPCError
from web3.middleware import AttributeDictMiddleware
from web3.providers.rpc.utils import check_if_retry_on_failure
from web3.types import RPCEndpoint, RPCResponse
from websockets.asyncio.client import ClientConnection, connect

from blueprint import safejson
from blueprint.bounded import MIB, read_bounded

#: Connections kept open to one node: enough for the consumer's overlapping sends, the receipt
#: waits and the producer's scans; a node sees at most this many sockets from us.
POOL_SIZE = 32
#: Seconds an idle pooled connection stays open (nodes typically close theirs after 60-120 s).
KEEPALIVE_S = 30.0
#: Largest answer read from a node (bytes). A node is a peer we do not control: one that answers
#: without end must not take the daemon's memory. The largest legitimate answers are our
#: ``eth_getLogs`` scans, a few MiB at most; past the bound the read stops, and the error reads as
#: a response size limit, on which the producer halves its scan range.
MAX_ANSWER_BYTES = 64 * MIB


def lean_web3(provider: Any) -> AsyncWeb3:
    """An ``AsyncWeb3`` without web3.py's default request middleware (results stay AttributeDicts).

    The validation layer costs an ``eth_chainId`` round trip before every ``eth_call``; with the
    ENS and gas layers an ``eth_call`` takes about 5.4 ms instead of 1.8 ms on anvil. None of them
    does anything for us: we sign with a known chain id, never use ENS names, and always set
    EIP-1559 fees and gas limits ourselves.
    """
    return AsyncWeb3(provider, middleware=[AttributeDictMiddleware])


class PooledHTTPProvider(AsyncHTTPProvider):
    """``AsyncHTTPProvider`` over a keep-alive connection pool (see the module docstring).

    Same constructor as web3's provider; ``request_kwargs={"timeout": seconds}`` sets the total
    timeout of one request, ``max_answer_bytes`` the largest answer read (an
    :class:`~blueprint.bounded.AnswerTooLargeError` beyond).
    """

    def __init__(self, endpoint_uri: str, request_kwargs: Mapping[str, Any] | None = None, *,
                 max_answer_bytes: int = MAX_ANSWER_BYTES, **kwargs: Any) -> None:
        kwargs_ = dict(request_kwargs or {})
        timeout = kwargs_.pop("timeout", DEFAULT_HTTP_TIMEOUT)
        super().__init__(endpoint_uri, request_kwargs=kwargs_, **kwargs)
        self._timeout = timeout if isinstance(timeout, ClientTimeout) else ClientTimeout(total=float(timeout))
        self._max_answer = max_answer_bytes
        self._session: ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._headers = dict(self.get_request_kwargs().get("headers") or self.get_request_headers())

    def _pooled_session(self) -> ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # a session is bound to its loop: a provider used again from another loop (after
            # ``disconnect``, or in tests) gets a fresh session rather than a dead one
            self._session = ClientSession(
                connector=TCPConnector(limit=POOL_SIZE, keepalive_timeout=KEEPALIVE_S),
                timeout=self._timeout,
                headers=self._headers,
                raise_for_status=True,
            )
            self._session_loop = loop
        return self._session

    def decode_rpc_response(self, raw_response: bytes) -> RPCResponse:
        """Depth-bounded (:mod:`blueprint.safejson`): a broken or hostile node's reply nested
        100,000 deep is an error here, not a segfault (web3 raises the recursion limit)."""
        return safejson.loads(raw_response)  # type: ignore[no-any-return]

    async def _post(self, request_data: bytes) -> bytes:
        async with self._pooled_session().post(self.endpoint_uri, data=request_data) as response:
            return await read_bounded(response, self._max_answer)

    async def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        retry = self.exception_retry_configuration
        if retry is None or not check_if_retry_on_failure(method, retry.method_allowlist):
            return await self._post(request_data)
        for attempt in range(retry.retries):
            try:
                return await self._post(request_data)
            except tuple(retry.errors):
                if attempt == retry.retries - 1:
                    raise
                await asyncio.sleep(retry.backoff_factor * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    async def make_batch_request(
        self, batch_requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        from web3._utils.batching import sort_batch_response_by_response_ids

        raw = await self._post(self.encode_batch_rpc_request(batch_requests))
        response = self.decode_rpc_response(raw)
        if not isinstance(response, list):
            return response  # an RPC error is one response object
        return sort_batch_response_by_response_ids(response)

    async def disconnect(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
        await super().disconnect()


class NodeSubscriptions:
    """``eth_subscribe`` over a plain WebSocket; notifications come as the node sent them.

    Why not web3's ``WebSocketProvider``: it formats every notification (a block header into
    ``AttributeDict`` and ``HexBytes`` trees, checksummed log addresses). Under a burst the daemon
    is told of every block and every job log, and that formatting was a tenth of its event-loop
    time, only for the producer to turn the values back into hex. Messages are parsed with the
    depth bound (:mod:`blueprint.safejson`: web3 uses ``json.loads``, which a message nested deep
    enough turns into a segfault). Use ``async with``; a dropped socket ends the iteration with
    the socket library's error (the producer reconnects).

    Args:
        url: the node's ``ws://`` or ``wss://`` endpoint.
        open_timeout: seconds the connection may take to open.
        ping_interval / ping_timeout: keep-alive pings (web3's defaults).
        max_size: largest message accepted, bytes (the socket library's default: 1 MiB).
    """

    def __init__(self, url: str, *, open_timeout: float = 10.0, ping_interval: float = 30.0,
                 ping_timeout: float = 300.0, max_size: int = 2**20) -> None:
        self.url = url
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_size = max_size
        self._ws: ClientConnection | None = None
        self._next_id = 0
        self._early: list[Mapping[str, Any]] = []

    async def __aenter__(self) -> NodeSubscriptions:
        self._ws = await connect(self.url, open_timeout=self.open_timeout, ping_interval=self.ping_interval,
                                 ping_timeout=self.ping_timeout, max_size=self.max_size)
        return self

    async def __aexit__(self, *exc: object) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def subscribe(self, kind: str, *params: Any) -> str:
        """Subscribe (``newHeads``, ``logs`` with a filter, ...) and return the subscription id."""
        self._next_id += 1
        request_id = self._next_id
        await self._socket().send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "eth_subscribe",
                                              "params": [kind, *params]}))
        while True:
            message = await self._receive()
            if message.get("id") != request_id:
                self._early.append(message)  # a notification of an earlier subscription
                continue
            error = message.get("error")
            if error is not None:
                text = error.get("message") if isinstance(error, Mapping) else error
                raise Web3RPCError(f"eth_subscribe {kind}: {text}", rpc_response=message)  # type: ignore[arg-type]
            return str(message.get("result"))

    async def notifications(self) -> AsyncIterator[tuple[str, Any]]:
        """``(subscription id, result)`` of each notification, in the order the node sent them."""
        while True:
            message = self._early.pop(0) if self._early else await self._receive()
            params = message.get("params") if message.get("method") == "eth_subscription" else None
            if isinstance(params, Mapping) and "subscription" in params:
                yield str(params["subscription"]), params.get("result")

    def _socket(self) -> ClientConnection:
        if self._ws is None:
            raise ProviderConnectionError(f"no WebSocket open to {self.url}")
        return self._ws

    async def _receive(self) -> Mapping[str, Any]:
        message = safejson.loads(await self._socket().recv())
        if not isinstance(message, Mapping):
            raise ProviderConnectionError(f"{self.url} sent a message that is not a JSON object")
        return message


async def raw_request(w3: AsyncWeb3, method: str, params: list[Any]) -> Any:
    """One JSON-RPC call through ``w3``'s provider, skipping web3.py's parameter and result
    formatters: the result comes back as the node sent it (hex strings, plain dicts).

    For the transaction manager's hot path (``eth_call``, ``eth_sendRawTransaction``,
    ``eth_getTransactionReceipt``): web3.py's receipt formatting alone (checksummed addresses,
    ``HexBytes`` per log field, ``AttributeDict`` trees) cost the daemon about a tenth of its
    event-loop time in a burst. An error answer raises ``Web3RPCError`` carrying the response, as
    web3.py would (``rpc_error_of`` reads its error object back).
    """
    response = await w3.provider.make_request(RPCEndpoint(method), params)
    error = response.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, Mapping) else None
        raise Web3RPCError(str(message or error), rpc_response=response)
    return response.get("result")


def rpc_error_of(exc: Web3RPCError) -> Mapping[str, Any]:
    """The JSON-RPC error object of an error raised by :func:`raw_request` (empty if none)."""
    response = exc.rpc_response or {}
    error = response.get("error") if isinstance(response, Mapping) else None
    return error if isinstance(error, Mapping) else {}
