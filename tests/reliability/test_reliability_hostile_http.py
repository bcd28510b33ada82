"""Hostile HTTP requests and upstreams against the real ``serve`` command (issue 11): one request,
one key holder or one upstream must never take the server down or fail other users' work."""

from __future__ import annotations

import asyncio
import json
import socket
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
        assert streamed.status_code == 400
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
