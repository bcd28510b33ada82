"""Raw SSE (keep-alives, [DONE], usage), 429 under a full queue, client disconnect, and mid-stream
failures, over the emulated OpenAI-compatible backend (real sockets end to end)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx

from blueprint.testing.emulated_backend import EmulatedOptions
from tests.server.conftest import API_KEY, LiveServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MSG = [{"role": "user", "content": "tell me about the operator and the chain and the model"}]


def _sse_lines(response: httpx.Response) -> list[str]:
    return [line for line in response.iter_lines() if line]


def _wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_sse_keepalive_done_and_usage(emulated_server: Callable[..., LiveServer]) -> None:
    # ~0.4 s of prefill before the first token; keep-alives every 50 ms meanwhile.
    live = emulated_server(EmulatedOptions(model="emu", prefill_s_per_token=0.03, decode_s_per_token=0.001))
    body = {"model": "emu", "messages": MSG, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.Client(timeout=10) as client:
        sent = time.perf_counter()
        with client.stream("POST", live.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
            headers_at = time.perf_counter() - sent
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-accel-buffering"] == "no"
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-request-id"]
            lines = _sse_lines(response)
    assert headers_at < 0.2, f"headers took {headers_at:.3f} s: not flushed before the first token"
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data >= 2 and all(line == ": keep-alive" for line in lines[:first_data])
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[first_data:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert all("usage" not in chunk for chunk in chunks[:-1])


def test_stream_without_include_usage_sends_no_usage(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server()
    body = {"model": "emu", "messages": MSG, "max_tokens": 3, "stream": True}
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", live.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        lines = _sse_lines(response)
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert lines[-1] == "data: [DONE]" and chunks
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)
    # ...but the server still counted the tokens (it asked the engine for usage itself).
    metrics = httpx.get(live.url + "/metrics").text
    assert 'blueprint_http_tokens_total{kind="completion",model="emu"} 3.0' in metrics


def test_full_queue_answers_429_at_once_and_disconnect_frees_the_slot(
        emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(EmulatedOptions(model="emu", decode_s_per_token=0.05),
                           node_overrides={"max_batch_size": 1, "max_queue": 0})
    slow = {"model": "emu", "messages": MSG, "max_tokens": 200, "stream": True}
    quick = {"model": "emu", "messages": MSG, "max_tokens": 2}
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", live.url + "/v1/chat/completions", json=slow, headers=AUTH) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            assert live.node().in_flight == 1
            for body in (quick, {**quick, "stream": True}):  # both answer a real 429, not SSE
                started = time.perf_counter()
                refused = client.post(live.url + "/v1/chat/completions", json=body, headers=AUTH)
                assert time.perf_counter() - started < 0.5
                assert refused.status_code == 429
                assert int(refused.headers["retry-after"]) >= 1
                assert refused.json()["error"]["type"] == "rate_limit_error"
        # The client hung up mid-stream (200 tokens would take 10 s): the slot comes back.
        assert _wait_until(lambda: live.node().in_flight == 0, timeout=3.0)
        assert live.backend is not None
        assert _wait_until(lambda: live.backend.stats.running == 0, timeout=3.0)
        again = client.post(live.url + "/v1/chat/completions", json=quick, headers=AUTH)
        assert again.status_code == 200
    metrics = httpx.get(live.url + "/metrics").text
    assert 'route="chat_completions",status="429"} 2.0' in metrics
    assert 'route="chat_completions",status="499"} 1.0' in metrics


def test_mid_stream_failure_is_an_sse_error_event(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(EmulatedOptions(model="emu", trivial=True, die_after_chunks=2))
    body = {"model": "emu", "messages": MSG, "max_tokens": 10, "stream": True}
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", live.url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.status_code == 200
        lines = _sse_lines(response)
    assert "data: [DONE]" not in lines
    last = json.loads(lines[-1][6:])
    assert last["error"]["code"] == "stream_interrupted"
    assert sum(1 for line in lines if line.startswith('data: {"id"')) >= 1


def test_rate_limit_per_key(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(rate_limit_per_minute=1, rate_limit_burst=2)
    with httpx.Client(timeout=10) as client:
        statuses = [client.get(live.url + "/v1/models", headers=AUTH).status_code for _ in range(3)]
        refused = client.get(live.url + "/v1/models", headers=AUTH)
    assert statuses == [200, 200, 429]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1


def test_timeouts_answer_504_and_sse_error(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(EmulatedOptions(model="emu", hang=True), request_timeout_s=0.3,
                           first_token_timeout_s=0.3)
    with httpx.Client(timeout=10) as client:
        started = time.perf_counter()
        unary = client.post(live.url + "/v1/chat/completions", headers=AUTH,
                            json={"model": "emu", "messages": MSG, "max_tokens": 2})
        assert unary.status_code == 504 and unary.json()["error"]["code"] == "request_timeout"
        with client.stream("POST", live.url + "/v1/chat/completions", headers=AUTH,
                           json={"model": "emu", "messages": MSG, "max_tokens": 2, "stream": True}) as stream:
            assert stream.status_code == 200
            lines = _sse_lines(stream)
        assert time.perf_counter() - started < 3.0
    assert lines[0] == ": keep-alive"
    assert json.loads(lines[-1][6:])["error"]["code"] == "first_token_timeout"
    assert _wait_until(lambda: live.node().in_flight == 0, timeout=3.0)


def test_model_catalog_extras_in_models(emulated_server: Callable[..., LiveServer]) -> None:
    extras = {"description": "An emulated model.", "capacity_tpm": 90000, "quantization": "bf16",
              "pricing": {"prompt": "0.0000001"}}
    live = emulated_server(model_catalog={"emu": extras}, models_document="legacy")
    data = httpx.get(live.url + "/v1/models", headers=AUTH).json()
    assert data["object"] == "list"
    (entry,) = data["data"]
    assert entry["id"] == "emu" and entry["object"] == "model"
    assert entry["description"] == "An emulated model." and entry["capacity_tpm"] == 90000
    assert entry["quantization"] == "bf16" and entry["pricing"]["prompt"] == "0.0000001"
    assert entry["is_ready"] is True


def _raw_stream(live: LiveServer, version: str, body: dict[str, object]) -> bytes:
    """One streamed request over a plain socket; the whole reply as it came (headers and body)."""
    import socket

    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", int(live.url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall((f"POST /v1/chat/completions {version}\r\nHost: x\r\nAuthorization: Bearer "
                      f"{API_KEY}\r\nContent-Type: application/json\r\nConnection: close\r\n"
                      f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_relayed_streams_are_framed_for_http_1_1_and_1_0(emulated_server: Callable[..., LiveServer]) -> None:
    """The chunks after the first are written from the upstream's read callback: HTTP/1.1 gets
    them in chunked framing, HTTP/1.0 (no chunked encoding) as the plain body; both end in
    [DONE] with every token, once."""
    live = emulated_server(EmulatedOptions(model="emu", decode_s_per_token=0.002, batch_penalty=0.0))
    body = {"model": "emu", "messages": MSG, "max_tokens": 12, "stream": True}
    chunked = _raw_stream(live, "HTTP/1.1", body)
    head, _, rest = chunked.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    decoded = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        decoded, rest = decoded + rest[:size], rest[size + 2:]
    plain = _raw_stream(live, "HTTP/1.0", body)
    head10, _, body10 = plain.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head10.lower()
    for text in (decoded, body10):
        events = [e for e in text.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        tokens = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert len([t for t in tokens if t]) == 12
