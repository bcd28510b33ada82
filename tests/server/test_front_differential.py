"""Differential test of the front (blueprint.server.front) against aiohttp: the same randomly
built requests, valid, unusual and malformed, sent to a server with the front and to one
without; both must answer each with the same status and error code. A hand-written HTTP parser
earns trust by agreeing with the reference on what it takes, and by handing over the rest.

300 cases with a fixed seed in the suite; ``FRONT_DIFF_SEED`` and ``FRONT_DIFF_CASES`` run others
(8 seeds of 800 agreed when it was written; the first runs found the front taking a second
``User-Agent`` or ``Host``, which aiohttp refuses)."""

from __future__ import annotations

import json
import os
import random
import socket
from collections.abc import Callable

import pytest

from tests.server.conftest import API_KEY, LiveServer
from tests.server.test_front import Reader

GOOD = json.dumps({"model": "emu", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
STREAM = json.dumps({"model": "emu", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                     "stream": True})


def _request(rng: random.Random, *, whole_bodies: bool = False) -> tuple[bytes, bytes]:
    """One request from a small grammar of what clients (and attackers) send, and the request
    as its framing delimits it (without bytes past its end: see the test). ``whole_bodies``:
    never a body shorter than its ``Content-Length``."""
    method = rng.choice(["POST"] * 8 + ["GET", "post", "PUT"])
    path = rng.choice(["/v1/chat/completions"] * 6 + ["/v1/completions", "/v1/embeddings",
                       "/v1/chat/completions?x=1", "/v1/chat/completions/", "//v1/chat/completions",
                       "/v1/models", "/V1/chat/completions"])
    version = rng.choice(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/1.2", "http/1.1"])
    body = rng.choice([GOOD] * 5 + [STREAM, '{"model": ', '{"model": "nope", "messages": []}', "",
                       json.dumps({"model": "emu", "prompt": "x"}),
                       json.dumps({"model": "emu", "input": "x"})])
    data = body.encode()
    headers: list[tuple[str, str]] = [("Host", "t")]
    auth = rng.choice([f"Bearer {API_KEY}"] * 6 + [f"bearer {API_KEY}", f"Bearer  {API_KEY}", "Bearer sk-no",
                       f"Basic {API_KEY}", "", None])
    if auth is not None:
        headers.append((rng.choice(["Authorization", "authorization", "AUTHORIZATION"]), auth))
    kind = rng.choice(["application/json"] * 5 + ["APPLICATION/JSON; charset=utf-8", "text/plain",
                       "application/json;", "application/jsonx", "", None])
    if kind is not None:
        headers.append(("Content-Type", kind))
    framing = rng.choice(["length"] * 8 + ["none", "chunked", "two-same", "two-different", "plus",
                          "leading-zero", "spaces", "longer-body", "shorter-body"])
    if framing == "length":
        headers.append((rng.choice(["Content-Length", "content-length"]), str(len(data))))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        data = b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
    elif framing == "two-same":
        headers += [("Content-Length", str(len(data)))] * 2
    elif framing == "two-different":
        headers += [("Content-Length", str(len(data))), ("Content-Length", str(len(data) + 1))]
    elif framing == "plus":
        headers.append(("Content-Length", f"+{len(data)}"))
    elif framing == "leading-zero":
        headers.append(("Content-Length", f"0{len(data)}"))
    elif framing == "spaces":
        headers.append(("Content-Length", f"  {len(data)}  "))
    elif framing == "longer-body":
        headers.append(("Content-Length", str(max(0, len(data) - 3))))
    elif framing == "shorter-body":  # the body never comes whole: a 408 after body_timeout_s
        headers.append(("Content-Length", str(len(data) + (0 if whole_bodies else 5))))
    for _ in range(rng.randint(0, 3)):
        headers.append(rng.choice([
            ("Connection", "keep-alive"), ("Connection", "close"), ("Connection", "Keep-Alive, close"),
            ("X-Request-Id", "abc-123"), ("X-Request-Id", "bad id"), ("X-Request-Id", "x" * 200),
            ("Accept", "*/*"), ("Accept", "text/event-stream"), ("User-Agent", "diff/1"),
            ("Expect", "100-continue"), ("Expect", "nothing"), ("X-Empty", ""), ("X-Tab", "a\tb"),
            ("X-Trailing", "v  "), ("Upgrade", "websocket"), ("Content-Type", "application/json"),
            ("Authorization", f"Bearer {API_KEY}"), ("Host", "t2"), ("ETag", "x"),
        ]))
    rng.shuffle(headers)
    eol = "\r\n" if rng.random() > 0.05 else "\n"
    head = f"{method} {path} {version}{eol}" + "".join(
        f"{name}:{rng.choice([' ', '', '  '])}{value}{eol}" for name, value in headers) + eol
    if rng.random() < 0.04:  # a space before the colon (RFC 9112: must be refused)
        head = head.replace(":", " :", 1)
    framed = data
    if framing == "none" and method == "POST":
        framed = b""  # no length, no chunked: an HTTP/1.1 request without a body
    elif framing == "longer-body":
        framed = data[:max(0, len(data) - 3)]
    return head.encode("latin-1") + data, head.encode("latin-1") + framed


@pytest.fixture
def pair(emulated_server: Callable[..., LiveServer]) -> tuple[LiveServer, LiveServer]:
    options = {"node_overrides": {"options": {"embeddings": True}}, "body_timeout_s": 0.3,
               "auth_failures_per_minute": None}
    return emulated_server(fast_front=True, **options), emulated_server(fast_front=False, **options)


def test_the_front_and_aiohttp_answer_random_requests_alike(pair: tuple[LiveServer, LiveServer]) -> None:
    """aiohttp's parser reads a whole read at once and refuses all of it when bytes past a
    request's end are not a request: it answers 400 to a valid request followed by garbage (a
    body sent without a length, a body longer than its ``Content-Length``). The front answers
    the request its framing delimits, then hands the rest to aiohttp (which refuses it). So for
    a request with bytes past its end the front's answer must be aiohttp's to the request as
    framed (the front took it) or to all of it (the front handed it over); for every other
    request, exactly aiohttp's."""
    front, reference = pair
    rng = random.Random(int(os.environ.get("FRONT_DIFF_SEED", "1530")))
    differences = []
    for number in range(int(os.environ.get("FRONT_DIFF_CASES", "300"))):
        request, framed = _request(rng)
        ours = _first_answer(front, request)
        accepted = [_first_answer(reference, request)]
        if framed != request:
            accepted.append(_first_answer(reference, framed))
        if ours not in accepted:
            differences.append((number, ours, accepted, request[:300]))
    assert not differences, "\n".join(map(repr, differences))


def _plain_request(rng: random.Random) -> bytes:
    """A request a well-behaved client sends: an inference route (or, now and then, another
    route, which hands the connection to aiohttp), with harmless variations."""
    auth = f"{rng.choice(['Authorization', 'authorization'])}:{rng.choice([' ', ''])}Bearer {API_KEY}\r\n"
    if rng.random() < 0.2:
        path = rng.choice(["/v1/models", "/health", "/ready"])
        return f"GET {path} HTTP/1.1\r\nHost: t\r\n{auth}\r\n".encode()
    path, body = rng.choice([("/v1/chat/completions", GOOD), ("/v1/chat/completions", STREAM),
                             ("/v1/completions", json.dumps({"model": "emu", "prompt": "x"})),
                             ("/v1/embeddings", json.dumps({"model": "emu", "input": "x"}))])
    extra = rng.choice(["", "Accept: */*\r\n", "Connection: keep-alive\r\n", "User-Agent: diff/1\r\n",
                        "X-Request-Id: abc-123\r\n"])
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def _answers_in_turn(live: LiveServer, requests: list[bytes]) -> list[tuple[int | None, str | None]]:
    """Each request sent after the answer to the one before, on one connection; (None, None)
    once the connection is closed."""
    answers: list[tuple[int | None, str | None]] = []
    with socket.create_connection(("127.0.0.1", live.server.port), timeout=3) as sock:
        reader = Reader(sock)
        for request in requests:
            try:
                sock.sendall(request)
                answer = reader.answer()
                if answer.status == 100:
                    answer = reader.answer()
            except (ConnectionError, TimeoutError):
                answers.append((None, None))
                break
            code = None
            if answer.status >= 400 and answer.headers.get("content-type", "").startswith("application/json"):
                try:
                    code = answer.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "unparsable"
            answers.append((answer.status, code))
    return answers


def _first_answer(live: LiveServer, request: bytes) -> tuple[int | None, str | None]:
    """The status and error code of the answer to ``request`` alone (None, None: closed or
    silent without one)."""
    return _answers_in_turn(live, [request])[0]


def test_the_front_and_aiohttp_agree_on_a_connection_kept_alive(pair: tuple[LiveServer, LiveServer]) -> None:
    """Three requests in turn on one connection (the front may take some and hand the
    connection over at another): the same answers, and the same point where it closes. (Bodies
    are whole here: after an answer given before its body came whole, the front closes the
    connection, where aiohttp reads the next request's bytes as the rest of that body.)"""
    front, reference = pair
    rng = random.Random(int(os.environ.get("FRONT_DIFF_SEED", "1531")))
    differences = []
    for number in range(int(os.environ.get("FRONT_DIFF_CASES", "100"))):
        requests = [_request(rng, whole_bodies=True)[1] if rng.random() < 0.3 else _plain_request(rng)
                    for _ in range(3)]  # mostly plain (the grammar's requests often end a connection)
        ours, theirs = _answers_in_turn(front, requests), _answers_in_turn(reference, requests)
        if ours != theirs:
            differences.append((number, ours, theirs, [request[:120] for request in requests]))
    assert not differences, "\n".join(map(repr, differences))
