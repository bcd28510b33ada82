"""The HTTP API fuzzed from its own OpenAPI document (schemathesis), plus the abuse cases a public
endpoint meets: a huge body, a prompt far past the context, and slow clients.

The server really listens on loopback, over the real balancer and HTTP engine, with an emulated
OpenAI backend in trivial mode (a subprocess) behind it. Every request is bounded by a client
timeout, so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from aiohttp import web
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from reliability_support import API_KEY, MODEL, BackendProcess, ThreadServer, openai_node, server_settings
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, status_code_conformance

from blueprint.config import Settings
from blueprint.quoting.quoter import quoter_from_settings
from blueprint.server.openapi import build_openapi
from blueprint.server.quote_route import enable_quotes

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CLIENT_TIMEOUT_S = 15.0
#: The server's own bound on a request (short here so that slow-client tests finish quickly).
REQUEST_TIMEOUT_S = 3.0
SCHEMA = schemathesis.openapi.from_dict(build_openapi())
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}


@pytest.fixture(scope="module")
def live() -> Iterator[ThreadServer]:
    backend = BackendProcess("--trivial", "--max-model-len", "2048").start()
    node = openai_node("emu-node", backend.base_url)

    def with_quotes(app: web.Application, balancer: Any) -> None:
        """Signed quotes as the daemon serves them (a throwaway key), so /v1/quote is fuzzed for real."""
        settings = Settings(nodes=[node], service_id=1)
        enable_quotes(app, quoter_from_settings(settings, balancer, Account.create(), 31337))

    settings = server_settings(request_timeout_s=REQUEST_TIMEOUT_S, first_token_timeout_s=2.0,
                               body_timeout_s=REQUEST_TIMEOUT_S, admin_keys=[API_KEY],
                               quote_rate_per_minute=None)  # fuzz the route, not its rate limit
    server = ThreadServer([node], settings, app_hook=with_quotes).start()
    try:
        yield server
    finally:
        server.stop()
        backend.stop()


def _served(live: ThreadServer) -> None:
    """A normal client is answered at once (the guard of every abuse test)."""
    started = time.monotonic()
    reply = httpx.post(f"{live.url}/v1/chat/completions", headers=AUTH, timeout=5.0, json={
        "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text
    assert time.monotonic() - started < 2.0


def _fuzz(url: str, label: str, mode: GenerationMode, examples: int) -> float:
    """Run ``examples`` generated requests of one operation; returns the slowest answer's time."""
    operation = OPERATIONS[label]
    slowest = [0.0]

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(mode))
    def run(case: Any) -> None:
        started = time.monotonic()
        response = case.call(base_url=url, headers=AUTH, timeout=CLIENT_TIMEOUT_S)
        slowest[0] = max(slowest[0], time.monotonic() - started)
        checks = [not_a_server_error, status_code_conformance]
        if response.status_code != 200 or "text/event-stream" not in response.headers.get("content-type", ""):
            checks.append(content_type_conformance)
        case.validate_response(response, checks=checks)

    run()
    return slowest[0]


#: Adding nodes changes what the shared server serves: fuzzed on a server of its own below.
ADD_NODE = "POST /admin/nodes"


def _has_input(label: str) -> bool:
    """Whether a request of this operation can be made invalid (a body or a path parameter)."""
    operation = OPERATIONS[label]
    return bool(list(operation.body)) or bool(list(operation.path_parameters))


FUZZ_CASES = [(label, mode) for label in sorted(set(OPERATIONS) - {ADD_NODE})
              for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
              if mode is GenerationMode.POSITIVE or _has_input(label)]


@pytest.mark.parametrize(("label", "mode"), FUZZ_CASES)
def test_openapi_fuzz(live: ThreadServer, label: str, mode: GenerationMode) -> None:
    """No 5xx, statuses and content types as documented, and no request takes long."""
    assert _fuzz(live.url, label, mode, 25) < REQUEST_TIMEOUT_S + 2.0
    _served(live)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_fuzz_add_node(backend_process: Any, thread_server: Any, mode: GenerationMode) -> None:
    """Arbitrary node configs (engines that cannot load, bad paths) are refused or added broken,
    never a 5xx, and the node that serves keeps serving."""
    backend = backend_process("--trivial")
    live = thread_server([openai_node("emu-node", backend.base_url)], server_settings(admin_keys=[API_KEY]))
    assert _fuzz(live.url, ADD_NODE, mode, 15) < CLIENT_TIMEOUT_S
    _served(live)


def test_fuzz_would_catch_a_server_error(live: ThreadServer) -> None:
    """The check used above fails on a 5xx (so the fuzz test can fail)."""
    operation = OPERATIONS["GET /health"]
    case = operation.Case()
    response = case.call(base_url=live.url, timeout=5.0)
    response.status_code = 500
    with pytest.raises(BaseException) as info:  # schemathesis raises a failure group
        case.validate_response(response, checks=[not_a_server_error])
    assert "Server error" in str(info.value)


def test_ten_megabyte_body_is_413_at_once(live: ThreadServer) -> None:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (10 << 20)}]})
    started = time.monotonic()
    headers = {**AUTH, "Content-Type": "application/json"}
    reply = httpx.post(f"{live.url}/v1/chat/completions", headers=headers, content=body.encode(),
                       timeout=10.0)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
    assert time.monotonic() - started < 3.0
    _served(live)


def test_chunked_body_past_the_limit_is_413(live: ThreadServer) -> None:
    """Without Content-Length the limit is enforced while reading."""
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "emu", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}]}'

    reply = httpx.post(f"{live.url}/v1/chat/completions", headers=AUTH, content=chunks(), timeout=10.0)
    assert reply.status_code == 413
    _served(live)


@pytest.mark.parametrize("route", ["chat", "completion"])
def test_prompt_far_past_the_context(live: ThreadServer, route: str) -> None:
    long_text = "lorem ipsum dolor sit amet " * 20_000  # ~100k tokens against a 2048-token model
    if route == "chat":
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": long_text}]}
    else:
        path, body = "/v1/completions", {"prompt": long_text}
    started = time.monotonic()
    reply = httpx.post(f"{live.url}{path}", headers=AUTH, json={"model": MODEL, "max_tokens": 16, **body},
                       timeout=10.0)
    assert reply.status_code in (400, 413), reply.text
    assert reply.json()["error"]["code"] == "context_length_exceeded"
    assert time.monotonic() - started < 3.0


def _connect(live: ThreadServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=10.0)
    return sock


def test_trickling_body_times_out_while_others_are_served(live: ThreadServer) -> None:
    """Headers, then one byte a second (slowloris): the server gives up within its read timeout
    instead of holding the connection and a handler forever."""
    sock = _connect(live)
    body_len = 500
    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n").encode())
    reply = b""
    answered = threading.Event()

    def read() -> None:
        nonlocal reply
        try:
            while chunk := sock.recv(65536):
                reply += chunk
                if b"\r\n\r\n" in reply:
                    break
        except OSError:
            pass
        answered.set()  # a status line, or the connection closed

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        for _ in range(int(REQUEST_TIMEOUT_S * 4)):
            if answered.is_set():
                break
            try:
                sock.sendall(b" ")
            except OSError:
                break
            _served(live)  # others are served while the slow one trickles
            answered.wait(0.5)
        answered.wait(REQUEST_TIMEOUT_S + 2)
        waited = time.monotonic() - started
    finally:
        sock.close()
    assert answered.is_set(), "the server kept a trickling client forever"
    assert waited < REQUEST_TIMEOUT_S + 3.0
    assert reply.startswith(b"HTTP/1.1 408") or reply == b"", reply[:200]


def test_stream_never_read_is_cut_and_frees_its_slot(live: ThreadServer) -> None:
    """A client that asks for a long stream and never reads: the server's request timeout ends the
    stream even though its writes are blocked, and the node's slot is freed."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10.0)
    sock.connect(("127.0.0.1", live.port))
    body = json.dumps({"model": MODEL, "stream": True, "n": 16, "max_tokens": 2000,
                       "messages": [{"role": "user", "content": "never read"}]}).encode()
    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    assert live.balancer is not None
    node = live.balancer.nodes()[0]
    try:
        deadline = time.monotonic() + 5.0
        while node.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.in_flight >= 1, "the stream never started"
        _served(live)  # others are served while the stream is stuck
        deadline = time.monotonic() + REQUEST_TIMEOUT_S + 5.0
        while node.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert node.in_flight == 0, "a never-read stream holds its node slot past the request timeout"
    finally:
        sock.close()
    _served(live)
