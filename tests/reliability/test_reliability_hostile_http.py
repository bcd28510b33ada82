"""Hostile HTTP requests and upstreams against the real ``serve`` command (issue 11): one request,
one key holder or one upstream must never take the server down or fail other users' work."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from reliability_support import API_KEY, MODEL, BackendProcess, ServeProcess

from blueprint.devnet.stack import write_config
from blueprint.server import ServerSettings

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
        if streamed.status_code == 200:  # the upstream answered after the header grace (a loaded box)
            assert streamed.text.startswith("data: ") and '"error"' in streamed.text, streamed.text[:300]
        else:
            assert streamed.status_code == 400, streamed.text[:300]
        assert client.get("/health").status_code == 200
    assert server.alive()


ADMIN_KEY = "sk-admin-only-5d1e7c"


def test_an_ordinary_key_is_never_an_admin_key(
        serve: Callable[..., ServeProcess], backend_process: Callable[..., BackendProcess]) -> None:
    """Row 2: with ``admin_keys`` unset the admin API is off, whatever key is presented (a paying
    customer must not add a node that receives other users' prompts)."""
    backend = backend_process("--trivial")
    server = serve([{"name": "emu", "engine": "openai", "model": MODEL, "base_url": backend.base_url}])
    hijack = {"name": "mine", "engine": "openai", "model": MODEL, "base_url": "http://127.0.0.1:9/v1"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path, body in (("GET", "/admin/nodes", None), ("POST", "/admin/nodes", hijack),
                                   ("POST", "/admin/nodes/emu/drain", None),
                                   ("DELETE", "/admin/nodes/emu", None)):
            reply = client.request(method, path, headers=AUTH, json=body)
            assert reply.status_code == 401 and reply.json()["error"]["code"] == "admin_disabled", reply.text
        assert client.post("/v1/chat/completions", headers=AUTH, json=CHAT).status_code == 200


def test_admin_engines_are_registered_names_only(
        serve: Callable[..., ServeProcess], backend_process: Callable[..., BackendProcess]) -> None:
    """Row 2: even an admin cannot make the server import and call an arbitrary ``module:callable``
    (``sys:exit`` stopped the server); built-in engines still work."""
    backend = backend_process("--trivial")
    server = serve([{"name": "emu", "engine": "openai", "model": MODEL, "base_url": backend.base_url}],
                   env={"SERVER__ADMIN_KEYS": ADMIN_KEY})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/admin/nodes", headers=AUTH).status_code == 401  # an API key is not admin
        for engine in ("sys:exit", "os:abort", "builtins:exec", "bench.echo_engine:EchoClient"):
            reply = client.post("/admin/nodes", headers=admin,
                                json={"name": "x", "engine": engine, "model": "m2"})
            assert reply.status_code == 400, (engine, reply.text)
            assert reply.json()["error"]["code"] == "unknown_engine"
        assert server.alive()
        added = client.post("/admin/nodes", headers=admin, json={
            "name": "emu-2", "engine": "openai", "model": MODEL, "base_url": backend.base_url})
        assert added.status_code == 201, added.text
        assert client.get("/health").status_code == 200


POISONS = [{"seed": 2**64}, {"seed": -(2**63) - 1}, {"top_k": 2**63}]


async def test_a_poisoned_request_fails_alone_and_never_trips_the_breaker(
        serve: Callable[..., ServeProcess], tiny_model_dir: Path) -> None:
    """Row 3, on the real ``serve`` with the tiny model: each bad request is refused (400) while
    four innocent requests sent with it succeed; then a burst of bad ones (more than the
    breaker's failure threshold) leaves the node healthy and serving."""
    server = serve([{"name": "tiny", "engine": "transformers", "model": "tiny", "path": str(tiny_model_dir),
                     "device": "cpu", "max_batch_size": 8}])
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.8}
    async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=AUTH) as client:
        for poison in POISONS:
            replies = await asyncio.gather(*(client.post("/v1/completions", json={**body, "seed": i})
                                             for i in range(4)),
                                           client.post("/v1/completions", json={**body, **poison}))
            *innocent, bad = replies
            assert [r.status_code for r in innocent] == [200] * 4, [r.text for r in innocent]
            assert bad.status_code == 400, (poison, bad.text)
            assert bad.json()["error"]["type"] == "invalid_request_error"
        for _ in range(3):
            for poison in POISONS:
                assert (await client.post("/v1/completions", json={**body, **poison})).status_code == 400
        assert (await client.get("/ready")).status_code == 200
        assert (await client.post("/v1/completions", json=body)).status_code == 200


@pytest.mark.parametrize("keys", [[""], ["  "], ["sk-good", "\u00a0"], ["sk bad"], ["sk-\u3000"]])
def test_empty_whitespace_or_invisible_keys_are_a_configuration_error(keys: list[str]) -> None:
    """Row 8: ``api_keys = [""]`` passed the public-bind guard, then U+00A0 / U+3000 / U+0085
    tokens authenticated (stripped to the empty key)."""
    with pytest.raises(ValueError, match="key"):
        ServerSettings(api_keys=keys)
    with pytest.raises(ValueError, match="key"):
        ServerSettings(api_keys=["sk-good"], admin_keys=keys)


def _raw_request(url: str, authorization: bytes) -> tuple[int, bytes]:
    """One request with the ``Authorization`` header's exact bytes; (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Authorization: " + authorization + b"\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_malformed_authorization_headers_are_401_in_openai_shape(
        serve: Callable[..., ServeProcess], backend_process: Callable[..., BackendProcess]) -> None:
    """Rows 8 and 10: strict header parsing; a non-UTF-8 byte was a 500 with a traceback."""
    backend = backend_process("--trivial")
    server = serve([{"name": "emu", "engine": "openai", "model": MODEL, "base_url": backend.base_url}])
    key = API_KEY.encode()
    assert _raw_request(server.url, b"Bearer " + key)[0] == 200
    for header in (b"Bearer \xff\xfe" + key, b"Bearer " + key + b"\xa0", b"Bearer  " + key,
                   b"Bearer \xc2\xa0", b"Bearer \xe3\x80\x80", b"Bearer \xc2\x85",
                   b"bearer" + key, b"Basic " + key, b"Bearer " + key + b" extra"):
        status, body = _raw_request(server.url, header)
        assert status == 401, (header, status, body)
        assert json.loads(body)["error"]["type"] == "authentication_error", body
    assert server.alive()


async def test_embeddings_are_bounded_and_never_starve_generation(
        serve: Callable[..., ServeProcess], tiny_model_dir: Path) -> None:
    """Row 9: 40,000 inputs in one request held the worker thread 23 s (every chat waited) and
    answered 54 MB; now more than 2,048 inputs (or too many tokens) is a 400, and an allowed
    large request is computed in slices between decode steps, so a chat sent meanwhile
    finishes first."""
    server = serve([{"name": "tiny", "engine": "transformers", "model": "tiny", "path": str(tiny_model_dir),
                     "device": "cpu", "max_batch_size": 8, "options": {"max_embedding_tokens": 50_000}}])
    async with httpx.AsyncClient(base_url=server.url, timeout=120, headers=AUTH) as client:
        huge = await client.post("/v1/embeddings", json={"model": "tiny", "input": ["a b c"] * 40_000})
        assert huge.status_code == 400 and huge.json()["error"]["param"] == "input", huge.text
        many_tokens = {"model": "tiny", "input": ["word " * 100] * 200}  # ~60,000 tokens > 50,000
        too_many_tokens = await client.post("/v1/embeddings", json=many_tokens)
        assert too_many_tokens.status_code == 400, too_many_tokens.text
        assert (await client.post("/v1/embeddings", json={"model": "tiny", "input": "x",
                                                          "dimensions": 2**31})).status_code == 400
        finished: dict[str, float] = {}

        async def timed(name: str, path: str, body: dict[str, Any]) -> httpx.Response:
            reply = await client.post(path, json=body)
            finished[name] = asyncio.get_running_loop().time()
            return reply

        # 2,000 inputs: 125 slices of 16, far more than the chat's prefill and 8 decode steps, so
        # the chat finishes first even where slices are fast (300 inputs raced it on a quiet box)
        big = asyncio.create_task(timed("embeddings", "/v1/embeddings",
                                        {"model": "tiny", "input": ["one two three four five"] * 2000}))
        await asyncio.sleep(0.05)
        chat = await timed("chat", "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 8})
        embedded = await big
        assert chat.status_code == 200 and embedded.status_code == 200, (chat.text, embedded.text[:300])
        assert len(embedded.json()["data"]) == 2000
        assert finished["chat"] < finished["embeddings"]


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading whatever it sends first)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def test_idle_and_half_sent_connections_are_closed_and_connections_are_bounded(
        serve: Callable[..., ServeProcess], backend_process: Callable[..., BackendProcess]) -> None:
    """Row 7: ~21k idle sockets from one client without a key exhausted file descriptors and
    nothing was logged. Real sockets held idle or trickling a header are closed after
    ``idle_timeout_s``; connections beyond ``max_connections`` are shed at once, with a log line;
    the server answers again as soon as they are gone."""
    backend = backend_process("--trivial")
    server = serve([{"name": "emu", "engine": "openai", "model": MODEL, "base_url": backend.base_url}],
                   env={"SERVER__IDLE_TIMEOUT_S": "1", "SERVER__MAX_CONNECTIONS": "16"})
    host, port = server.url.removeprefix("http://").split(":")
    idle = socket.create_connection((host, int(port)))
    partial = socket.create_connection((host, int(port)))
    partial.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    assert _closed_within(idle, 5) and _closed_within(partial, 5)
    held = [socket.create_connection((host, int(port))) for _ in range(24)]
    try:
        shed = [sock for sock in held if _closed_within(sock, 0.3)]
        assert len(shed) >= 8, len(shed)
        time.sleep(1.5)  # the idle ones time out
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
    finally:
        for sock in held:
            sock.close()
    assert "connection_shed" in server.log_path.read_text()


def test_low_level_errors_are_openai_shaped_and_echo_no_secret(
        serve: Callable[..., ServeProcess], backend_process: Callable[..., BackendProcess]) -> None:
    """Row 10: aiohttp's own 400 for a malformed header was plain text quoting the header (the
    key included), and it logged that header with the key at error level."""
    backend = backend_process("--trivial")
    node = {"name": "emu", "engine": "openai", "model": MODEL, "base_url": backend.base_url}
    server = serve([node], "-vvv")
    host, port = server.url.removeprefix("http://").split(":")
    key = API_KEY.encode()
    for raw in (b"Authorization: Bearer " + key + b"\x00", b"Authorization : Bearer " + key):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + raw + b"\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400" and b"application/json" in head, data
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        assert API_KEY.encode() not in data
    server.stop()
    assert API_KEY not in server.log_path.read_text()


def test_loose_requests_are_refused(serve: Callable[..., ServeProcess],
                                    backend_process: Callable[..., BackendProcess]) -> None:
    """Row 10: ``stream: "yes"``, a ``text/plain`` body and ``tool_choice`` without ``tools`` were
    accepted."""
    backend = backend_process("--trivial")
    server = serve([{"name": "emu", "engine": "openai", "model": MODEL, "base_url": backend.base_url}])
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client:
        for body in ({**CHAT, "stream": "yes"}, {**CHAT, "tool_choice": "auto"},
                     {**CHAT, "tool_choice": {"type": "function", "function": {"name": "f"}}}):
            reply = client.post("/v1/chat/completions", json=body)
            assert reply.status_code == 400, (body, reply.text)
            assert reply.json()["error"]["type"] == "invalid_request_error"
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            reply = client.post("/v1/chat/completions", content=json.dumps(CHAT).encode(), headers=headers)
            assert reply.status_code == 400 and "application/json" in reply.json()["error"]["message"], \
                (content_type, reply.text)
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert client.post("/v1/chat/completions", content=json.dumps(CHAT).encode(),
                           headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200
