"""The lean HTTP/1.1 front (blueprint.server.front): what it serves itself, what it hands to
aiohttp, and that both answer alike, against a real server on loopback over raw sockets (so each
byte of a request is the test's to choose)."""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from blueprint.server.app import API_KEY as API_KEY_APP
from blueprint.testing.emulated_backend import EmulatedOptions
from tests.server.conftest import API_KEY, LiveServer

BODY = json.dumps({"model": "emu", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()


def post(path: str = "/v1/chat/completions", body: bytes = BODY, *, extra: str = "",
         key: str | None = API_KEY, version: str = "1.1", content_type: str = "application/json") -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: t\r\n"
    if key is not None:
        head += f"Authorization: Bearer {key}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    if "Content-Length" not in extra and "Transfer-Encoding" not in extra:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


class Answer:
    def __init__(self, status: int, headers: dict[str, str], names: list[str], body: bytes) -> None:
        self.status, self.headers, self.names, self.body = status, headers, names, body

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)


class Reader:
    """Reads whole HTTP/1.1 answers (Content-Length or chunked) off a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buffer += data

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        part, self.buffer = self.buffer.split(marker, 1)
        return part

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        part, self.buffer = self.buffer[:n], self.buffer[n:]
        return part

    def answer(self) -> Answer:
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        names = [line.split(":", 1)[0] for line in head[1:]]
        headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in head[1:]}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._until(b"\r\n"), 16)
                body += self._exactly(size)
                self._exactly(2)
                if size == 0:
                    break
        elif "content-length" in headers or status in (100, 204, 304):
            body = self._exactly(int(headers.get("content-length", "0")))
        else:  # neither length nor chunked: the body ends with the connection
            try:
                while True:
                    self._fill()
            except ConnectionError:
                pass
            body, self.buffer = self.buffer, b""
        return Answer(status, headers, names, body)

    def closed(self, within_s: float = 3.0) -> bool:
        self.sock.settimeout(within_s)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


@contextmanager
def connect(live: LiveServer) -> Iterator[tuple[socket.socket, Reader]]:
    sock = socket.create_connection(("127.0.0.1", live.server.port), timeout=10)
    try:
        yield sock, Reader(sock)
    finally:
        sock.close()


def counting(live: LiveServer) -> list[str]:
    """The routes the front served from now on (its handler wrapped)."""
    front = live.server.front
    assert front is not None
    served: list[str] = []
    handler = front.handler

    async def spy(request):  # type: ignore[no-untyped-def]
        served.append(request.route)
        await handler(request)

    front.handler = spy
    return served


@pytest.fixture
def live(emulated_server: Callable[..., LiveServer]) -> LiveServer:
    return emulated_server(node_overrides={"options": {"embeddings": True}}, body_timeout_s=0.5,
                           idle_timeout_s=1.0)


def test_hot_routes_are_the_fronts_and_the_rest_aiohttps_on_one_connection(live: LiveServer) -> None:
    served = counting(live)
    with connect(live) as (sock, reader):
        sock.sendall(post())
        assert reader.answer().json()["object"] == "chat.completion"
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + API_KEY.encode()
                     + b"\r\n\r\n")
        models = reader.answer()
        assert models.status == 200 and models.json()["data"][0]["id"] == "emu"
        sock.sendall(post())  # aiohttp has the connection now, and serves the rest of it
        assert reader.answer().status == 200
    assert served == ["chat_completions"]
    with connect(live) as (sock, reader):
        sock.sendall(post("/v1/completions", json.dumps({"model": "emu", "prompt": "a"}).encode()))
        assert reader.answer().json()["object"] == "text_completion"
        sock.sendall(post("/v1/embeddings", json.dumps({"model": "emu", "input": "a"}).encode()))
        assert reader.answer().json()["data"][0]["object"] == "embedding"
    assert served == ["chat_completions", "completions", "embeddings"]


CASES: dict[str, bytes] = {
    "ok": post(),
    "no key": post(key=None),
    "wrong key": post(key="sk-wrong"),
    "bad json": post(body=b'{"model": '),
    "unknown model": post(body=json.dumps({"model": "nope", "messages": []}).encode()),
    "form body": post(content_type="application/x-www-form-urlencoded"),
    "no content type": post(content_type=""),
    "json with charset": post(content_type="Application/JSON; charset=utf-8"),
    "too large": post(body=b"{" + b" " * 5000 + b"}"),
    "stream": post(body=json.dumps({"model": "emu", "messages": [{"role": "user", "content": "hi"}],
                                    "stream": True, "max_tokens": 3}).encode()),
    "deep nesting": post(body=b'{"model": "emu", "messages": ' + b"[" * 2000 + b"]" * 2000 + b"}"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_front_answers_as_aiohttp_does(emulated_server: Callable[..., LiveServer], case: str) -> None:
    answers = []
    for fast in (True, False):
        live = emulated_server(fast_front=fast, max_body_bytes=4096)
        served = counting(live) if fast else []
        with connect(live) as (sock, reader):
            sock.sendall(CASES[case])
            answers.append(reader.answer())
        assert served == (["chat_completions"] if fast else [])
    front, aiohttp = answers
    assert front.status == aiohttp.status
    if front.status == 413:  # its body is never read: the front says it closes the connection
        assert front.headers.pop("connection") == "close"
        front.names.remove("Connection")
    assert sorted(front.names) == sorted(aiohttp.names), (front.names, aiohttp.names)
    for name in ("content-type", "retry-after", "cache-control", "transfer-encoding", "server"):
        assert front.headers.get(name) == aiohttp.headers.get(name)
    if front.headers["content-type"] == "application/json":
        one, other = front.json(), aiohttp.json()
        for answer in (one, other):
            answer.pop("id", None), answer.pop("created", None)
        assert one == other
    else:
        assert front.body.count(b"data: ") == aiohttp.body.count(b"data: ")
        assert front.body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("head", [
    b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n",  # a query string
    b"POST /v1/chat/completions HTTP/1.0\r\n",  # another version
    b"POST /v1/chat/completions/ HTTP/1.1\r\n",  # another path
])
def test_unusual_request_lines_are_aiohttps(live: LiveServer, head: bytes) -> None:
    served = counting(live)
    request = post()
    with connect(live) as (sock, reader):
        sock.sendall(head + request.split(b"\r\n", 1)[1])
        answer = reader.answer()
    assert served == []
    assert answer.status in (200, 404)


def test_a_chunked_body_is_aiohttps_and_served(live: LiveServer) -> None:
    served = counting(live)
    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY)
    with connect(live) as (sock, reader):
        sock.sendall(post(body=chunked, extra="Transfer-Encoding: chunked\r\n"))
        assert reader.answer().json()["object"] == "chat.completion"
    assert served == []


@pytest.mark.parametrize("extra", [
    f"Content-Length: {len(BODY)}\r\nContent-Length: {len(BODY)}\r\n",  # two lengths
    f"Content-Length: {len(BODY)}\r\nTransfer-Encoding: chunked\r\n",  # length and chunked
    f"Content-Length: +{len(BODY)}\r\n",  # not digits
    "Authorization: Bearer sk-other\r\n",  # a second key: which one is meant?
    "X-Folded: a\r\n b\r\n",  # obsolete line folding
    "X-Bad Name: a\r\n",  # not a token
    "X-Control: a\x01b\r\n",  # a control character
    "X-Long: " + "a" * 9000 + "\r\n",  # a field longer than aiohttp takes (it answers 400)
    "User-Agent: a\r\nUser-Agent: b\r\n",  # a second copy of a header aiohttp takes once
    "Host: other\r\n",  # (post() sends Host already)
])
def test_ambiguous_heads_are_never_the_fronts(live: LiveServer, extra: str) -> None:
    """A head two parsers could read two ways goes whole to aiohttp (one parser decides)."""
    served = counting(live)
    with connect(live) as (sock, reader):
        sock.sendall(post(extra=extra))
        try:
            answer = reader.answer()
        except ConnectionError:
            answer = None
    assert served == []
    assert answer is None or answer.status in (200, 400, 401)


def test_pipelined_requests_are_answered_in_order(live: LiveServer) -> None:
    served = counting(live)
    with connect(live) as (sock, reader):
        sock.sendall(post() + post(key="sk-wrong") + post("/v1/completions", b'{"model":"emu","prompt":"x"}'))
        statuses = [reader.answer().status for _ in range(3)]
    assert statuses == [200, 401, 200]
    assert served == ["chat_completions", "chat_completions", "completions"]


def test_a_body_in_pieces_is_waited_for(live: LiveServer) -> None:
    request = post()
    with connect(live) as (sock, reader):
        for start in range(0, len(request), 7):
            sock.sendall(request[start:start + 7])
            time.sleep(0.002)
        assert reader.answer().status == 200


def test_a_body_that_never_comes_is_a_408_and_the_connection_closes(live: LiveServer) -> None:
    request = post()
    with connect(live) as (sock, reader):
        sock.sendall(request[:-5])
        answer = reader.answer()
        assert answer.status == 408 and answer.json()["error"]["code"] == "body_timeout"
        assert reader.closed()


def test_a_key_is_checked_before_the_body_is_waited_for(live: LiveServer) -> None:
    with connect(live) as (sock, reader):
        sock.sendall(post(key="sk-wrong")[:-5])
        # a 401, not the 408 that waiting for the body would end in after body_timeout_s
        assert reader.answer().status == 401
        assert reader.closed()  # its body never came whole: the connection cannot go on


def test_an_oversized_body_is_refused_unread(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(max_body_bytes=4096)
    with connect(live) as (sock, reader):
        sock.sendall(post(body=b"", extra="Content-Length: 999999999999\r\n"))
        answer = reader.answer()
        assert answer.status == 413 and answer.json()["error"]["code"] == "request_too_large"
        assert reader.closed()


def test_a_silent_or_trickling_head_is_closed_after_idle_timeout(live: LiveServer) -> None:
    for first in (b"", b"POST /v1/chat/comp"):
        with connect(live) as (sock, reader):
            sock.sendall(first)
            started = time.monotonic()
            assert reader.closed(within_s=4)
            assert 0.8 < time.monotonic() - started < 3


def test_connection_close_is_honoured(live: LiveServer) -> None:
    with connect(live) as (sock, reader):
        sock.sendall(post(extra="Connection: close\r\n"))
        answer = reader.answer()
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert reader.closed()


def test_max_connections_counts_both_kinds(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(max_connections=2)
    with connect(live) as (one, one_reader), connect(live) as (two, two_reader):
        one.sendall(post())
        assert one_reader.answer().status == 200
        two.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")  # handed to aiohttp
        assert two_reader.answer().status == 200
        with connect(live) as (_three, three_reader):
            answer = three_reader.answer()
            assert answer.status == 503 and answer.json()["error"]["code"] == "too_many_connections"


def _wait_for(condition: Callable[[], bool], within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_client_gone_mid_request_cancels_its_answer(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(backend=EmulatedOptions(model="emu", hang=True))
    telemetry = live.server.runner.app[API_KEY_APP].telemetry
    with connect(live) as (sock, _reader):
        sock.sendall(post())
        assert _wait_for(lambda: telemetry.in_flight_now == 1)
    assert _wait_for(lambda: telemetry.in_flight_now == 0)  # cancelled, not left to hang
    assert _wait_for(lambda: not live.server.front.connections)


def test_mangled_heads_never_hurt_the_server(live: LiveServer) -> None:
    """Random byte damage to a good request: each gets an answer or a closed connection, and a
    good request on a fresh connection still succeeds (bounded: 150 variants, fixed seed)."""
    rng = random.Random(15)
    good = post()
    for _ in range(150):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        with connect(live) as (sock, reader):
            sock.settimeout(3)
            sock.sendall(bytes(damaged))
            try:
                reader.answer()
            except (ConnectionError, TimeoutError, ValueError, IndexError):
                pass
    with connect(live) as (sock, reader):
        sock.sendall(good)
        answer = reader.answer()  # damaged keys count as failed authentications from this peer
        assert answer.status == 200 or answer.json()["error"]["code"] == "too_many_auth_failures"
    with socket.create_connection(("127.0.0.1", live.server.port), timeout=10,
                                  source_address=("127.0.0.2", 0)) as sock:  # another peer
        sock.sendall(good)
        assert Reader(sock).answer().status == 200


@pytest.mark.parametrize("fast", [True, False])
def test_a_stream_whose_client_breaks_mid_write_is_a_499_not_a_500(
        emulated_server: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    """A stream's write that finds the client's socket closing (before asyncio reports the loss)
    ends the request as the client's going away, on both paths: counted 499, not logged as a
    defect, and no error answer written where the stream was to be."""
    from blueprint.server import front, sse

    stream_class: type = front.FrontStream if fast else sse.SseResponse
    real_write = stream_class.write

    async def breaking_write(self: object, data: bytes) -> None:
        if data:  # the first chunk: the client is found gone
            raise ConnectionResetError("Cannot write to closing transport")
        await real_write(self, data)

    monkeypatch.setattr(stream_class, "write", breaking_write)
    live = emulated_server(fast_front=fast)
    body = json.dumps({"model": "emu", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                       "max_tokens": 8}).encode()
    with connect(live) as (sock, _reader):
        sock.sendall(post(body=body))
        received = b""
        sock.settimeout(5)
        while True:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            received += data
    assert b" 500 " not in received, received
    metrics = live.run(_scrape(live))
    assert 'route="chat_completions",status="499"} 1.0' in metrics
    assert 'status="500"' not in metrics


async def _scrape(live: LiveServer) -> str:
    return live.server.runner.app[API_KEY_APP].telemetry.render().decode()


@pytest.mark.parametrize("fast", [True, False])
def test_expect_100_continue_is_answered_before_the_body(
        emulated_server: Callable[..., LiveServer], fast: bool) -> None:
    """curl sends ``Expect: 100-continue`` with any body over 1 KiB and waits for the interim
    answer before sending it: both paths send it, and the front keeps such requests."""
    live = emulated_server(fast_front=fast)
    served = counting(live) if fast else []
    request = post(extra="Expect: 100-continue\r\n")
    head, body = request.split(b"\r\n\r\n", 1)
    with connect(live) as (sock, reader):
        sock.sendall(head + b"\r\n\r\n")
        assert reader._until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue"
        sock.sendall(body)
        assert reader.answer().json()["object"] == "chat.completion"
    assert served == (["chat_completions"] if fast else [])
    with connect(live) as (sock, reader):  # any other expectation: aiohttp's 417
        sock.sendall(post(extra="Expect: something\r\n"))
        assert reader.answer().status == 417


@pytest.mark.parametrize("fast", [True, False])
def test_an_http10_stream_ends_with_its_connection(emulated_server: Callable[..., LiveServer],
                                                   fast: bool) -> None:
    """HTTP/1.0 has no chunked framing: a stream's body ends only with the connection, even
    when the client asked to keep it alive (aiohttp kept it open: the client waited for an end
    that came only after idle_timeout_s)."""
    live = emulated_server(fast_front=fast)
    body = json.dumps({"model": "emu", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                       "max_tokens": 3}).encode()
    with connect(live) as (sock, _reader):
        sock.sendall(post(body=body, version="1.0", extra="Connection: keep-alive\r\n"))
        sock.settimeout(3)
        received = b""
        started = time.monotonic()
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
        assert time.monotonic() - started < 2
    assert received.startswith(b"HTTP/1.0 200") and received.endswith(b"data: [DONE]\n\n")
