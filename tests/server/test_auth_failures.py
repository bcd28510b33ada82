"""Failed authentications bounded per client address (blueprint.server.auth_failures): wrong keys
from one TCP peer are answered 429 after the burst, on the front, on the aiohttp path, on the
admin routes and on the console's login, with the right key too until the bucket refills; another
peer is not affected; a correct key never touches the limiter. Real servers on loopback; the
second peer is the client socket bound to 127.0.0.2 (all of 127/8 is loopback on Linux)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
import structlog

from blueprint.server import ServerSettings
from blueprint.server.app import API_KEY as API_KEY_APP
from blueprint.server.auth_failures import AuthFailures, client_address
from blueprint.server.console.sessions import COOKIE
from tests.clock import ManualClock as Clock
from tests.server.conftest import API_KEY, LiveServer
from tests.server.test_front import Reader, counting, post

ADMIN_KEY = "sk-admin-guess-me-not-5d1e"
OTHER_PEER = "127.0.0.2"
#: Slow enough that a blocked address stays blocked through the test (a token a second).
SLOW = {"auth_failures_per_minute": 60.0, "auth_failure_burst": 3}


# ---- the limiter itself ---------------------------------------------------------------------


def test_burst_then_blocked_then_refilled() -> None:
    clock = Clock()
    failures = AuthFailures(60.0, 3, clock=clock)
    assert not failures.blocked
    for _ in range(2):
        failures.failed("10.0.0.1")
        assert failures.retry_after("10.0.0.1") == 0.0 and not failures.blocked
    failures.failed("10.0.0.1")  # the third takes the last token: blocked until one is back
    assert failures.retry_after("10.0.0.1") == pytest.approx(1.0)
    assert failures.retry_after("10.0.0.2") == 0.0  # another address is not affected
    clock.now += 0.5
    assert failures.retry_after("10.0.0.1") == pytest.approx(0.5)
    clock.now += 0.5
    assert failures.retry_after("10.0.0.1") == 0.0
    assert not failures.blocked  # forgotten once it ran out: the hot path's test is empty again
    failures.failed("10.0.0.1")  # one token came back: one more guess, then blocked again
    assert failures.retry_after("10.0.0.1") == pytest.approx(1.0)


def test_off_when_no_rate() -> None:
    failures = AuthFailures(None, 3)
    assert not failures.enabled
    for _ in range(100):
        failures.failed("10.0.0.1")
    assert not failures.blocked and failures.retry_after("10.0.0.1") == 0.0 and len(failures) == 0


def test_the_table_is_bounded_and_stale_blocks_are_swept() -> None:
    clock = Clock()
    failures = AuthFailures(60.0, 1, max_addresses=100, clock=clock)
    for n in range(10_000):  # a flood from many addresses, each blocked at its first failure
        failures.failed(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
    assert len(failures) == 100 and len(failures.blocked) <= 100
    assert failures.retry_after("10.0.39.15") > 0  # the newest are kept (least recently used go)
    assert failures.retry_after("10.0.0.0") == 0.0
    clock.now += 2.0  # every block ran out, and none of those addresses came back
    assert failures.retry_after("192.0.2.1") == 0.0
    assert not failures.blocked  # swept by any later look-up, so the front stops looking


def test_one_warning_per_address_per_window_and_never_a_key() -> None:
    clock = Clock()
    failures = AuthFailures(600.0, 2, clock=clock)
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):  # blocked, refilled, blocked again... within one window
            failures.failed("10.0.0.1")
            failures.failed("10.0.0.1")
            clock.now += 0.2
        failures.failed("10.0.0.2")
        failures.failed("10.0.0.2")
        clock.now += 61.0
        failures.failed("10.0.0.1")
        failures.failed("10.0.0.1")
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["peer"] for entry in warnings] == ["10.0.0.1", "10.0.0.2", "10.0.0.1"]
    assert {entry["event"] for entry in warnings} == {"auth_failures_blocked"}


def test_client_address_groups_ipv6_by_64_and_unwraps_mapped_ipv4() -> None:
    assert client_address("192.0.2.7") == "192.0.2.7"
    assert client_address("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_address("2001:db8:1:2:aaaa::1") == client_address("2001:db8:1:2:bbbb::9") \
        == "2001:db8:1:2::/64"
    assert client_address("2001:db8:1:3::1") != client_address("2001:db8:1:2::1")
    assert client_address(None) == "unknown"


@pytest.mark.parametrize("fields", [{"auth_failures_per_minute": 0}, {"auth_failure_burst": 0}])
def test_settings_are_validated(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ServerSettings(**fields)


def test_settings_default_on_and_none_turns_it_off() -> None:
    assert ServerSettings().auth_failures_per_minute == 30.0
    assert ServerSettings().auth_failure_burst == 10
    assert ServerSettings(auth_failures_per_minute=None).auth_failures_per_minute is None


# ---- live servers on loopback ---------------------------------------------------------------

@contextmanager
def raw(live: LiveServer, source: str = "127.0.0.1") -> Iterator[tuple[socket.socket, Reader]]:
    sock = socket.create_connection(("127.0.0.1", live.server.port), timeout=10,
                                    source_address=(source, 0))
    try:
        yield sock, Reader(sock)
    finally:
        sock.close()


def _client(source: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(timeout=10, transport=httpx.HTTPTransport(local_address=source))


def _until_blocked(send: Callable[[], int], burst: int) -> list[int]:
    """Wrong keys until the first 429 (bounded): the statuses seen."""
    statuses: list[int] = []
    for _ in range(burst + 3):
        statuses.append(send())
        if statuses[-1] == 429:
            break
    return statuses


def _assert_blocked_after_burst(statuses: list[int], burst: int) -> None:
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {401} and burst <= len(statuses) - 1 <= burst + 1, statuses


def _too_many(answer_status: int, headers: dict[str, str] | httpx.Headers, body: dict) -> None:  # type: ignore[type-arg]
    assert answer_status == 429
    assert int(headers["retry-after"]) >= 1
    assert body["error"]["code"] == "too_many_auth_failures"
    assert body["error"]["type"] == "rate_limit_error"


def test_front_blocks_an_address_after_the_burst_even_with_the_right_key(
        emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(**SLOW)
    served = counting(live)
    with structlog.testing.capture_logs() as logs, raw(live) as (sock, reader):
        def wrong() -> int:
            sock.sendall(post(key="sk-guess-d41d8c"))
            return reader.answer().status
        statuses = _until_blocked(wrong, 3)
        _assert_blocked_after_burst(statuses, 3)
        sock.sendall(post())  # the right key: refused too, or the 429 would tell which guess was right
        answer = reader.answer()
        _too_many(answer.status, answer.headers, answer.json())
        for _ in range(3):  # still blocked: no further warning within the window
            sock.sendall(post(key="sk-guess-d41d8c"))
            assert reader.answer().status == 429
    warnings = [entry for entry in logs if entry["event"] == "auth_failures_blocked"]
    assert len(warnings) == 1 and warnings[0]["peer"] == "127.0.0.1" and warnings[0]["log_level"] == "warning"
    assert "sk-guess-d41d8c" not in repr(logs) and API_KEY not in repr(logs)
    assert set(served) == {"chat_completions"} and len(served) == len(statuses) + 4  # all the front's
    with raw(live, OTHER_PEER) as (sock, reader):  # another peer is served as ever
        sock.sendall(post())
        assert reader.answer().status == 200
        sock.sendall(post(key="sk-guess"))
        assert reader.answer().status == 401


def test_aiohttp_path_blocks_an_address_after_the_burst(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(fast_front=False, **SLOW)
    assert live.server.front is None
    body = {"model": "emu", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with _client() as client:
        url = live.url + "/v1/chat/completions"
        statuses = _until_blocked(lambda: client.post(
            url, json=body, headers={"Authorization": "Bearer sk-guess"}).status_code, 3)
        _assert_blocked_after_burst(statuses, 3)
        for path in ("/v1/chat/completions", "/v1/models"):  # every route that needs a key
            reply = client.request("POST" if "chat" in path else "GET", live.url + path, json=body,
                                   headers={"Authorization": f"Bearer {API_KEY}"})
            _too_many(reply.status_code, reply.headers, reply.json())
    with _client(OTHER_PEER) as client:
        assert client.get(live.url + "/v1/models",
                          headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_admin_routes_are_bounded_and_share_the_addresses_budget(
        emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(admin_keys=[ADMIN_KEY], console={"enabled": False}, **SLOW)
    with _client() as client:
        statuses = _until_blocked(lambda: client.get(
            live.url + "/admin/nodes", headers={"Authorization": "Bearer admin123"}).status_code, 3)
        _assert_blocked_after_burst(statuses, 3)
        reply = client.get(live.url + "/admin/nodes", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        _too_many(reply.status_code, reply.headers, reply.json())
        reply = client.get(live.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        _too_many(reply.status_code, reply.headers, reply.json())  # one budget per address
    with _client(OTHER_PEER) as client:
        assert client.get(live.url + "/admin/nodes",
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


def test_console_login_is_bounded(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(admin_keys=[ADMIN_KEY], **SLOW)
    login = live.url + "/console/login"
    with _client() as client:
        statuses = _until_blocked(lambda: client.post(login, data={"key": "admin123"}).status_code, 3)
        _assert_blocked_after_burst(statuses, 3)
        page = client.post(login, data={"key": ADMIN_KEY})
        assert page.status_code == 429 and int(page.headers["retry-after"]) >= 1
        assert "Too many failed logins" in page.text and "text/html" in page.headers["content-type"]
        assert COOKIE not in page.headers.get("set-cookie", "") and COOKIE not in client.cookies
        state = client.get(live.url + "/console/api/state", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        _too_many(state.status_code, state.headers, state.json())
    with _client(OTHER_PEER) as client:
        assert client.post(login, data={"key": ADMIN_KEY}).status_code == 303


@pytest.mark.parametrize("fast_front", [True, False])
def test_an_address_is_served_again_once_its_bucket_refills(
        emulated_server: Callable[..., LiveServer], fast_front: bool) -> None:
    live = emulated_server(fast_front=fast_front, auth_failures_per_minute=1200.0, auth_failure_burst=2)
    with raw(live) as (sock, reader):
        def wrong() -> int:
            sock.sendall(post(key="sk-guess"))
            return reader.answer().status
        statuses = _until_blocked(wrong, 2)
        assert statuses[-1] == 429 and 401 in statuses, statuses
        time.sleep(0.1)  # a token is back after 50 ms at 20 a second
        sock.sendall(post())
        assert reader.answer().status == 200


def test_off_when_none(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(auth_failures_per_minute=None, auth_failure_burst=1)
    with raw(live) as (sock, reader):
        for _ in range(5):
            sock.sendall(post(key="sk-guess"))
            assert reader.answer().status == 401
        sock.sendall(post())
        assert reader.answer().status == 200


def test_a_correct_key_never_touches_the_limiter(emulated_server: Callable[..., LiveServer],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    live = emulated_server(admin_keys=[ADMIN_KEY], console={"enabled": False})
    api = live.server.runner.app[API_KEY_APP]
    failures = api.auth_failures
    calls: list[str] = []
    for name in ("failed", "retry_after"):
        original = getattr(failures, name)

        def spy(*args: object, _name: str = name, _original: Callable[..., object] = original) -> object:
            calls.append(_name)
            return _original(*args)
        monkeypatch.setattr(failures, name, spy)
    import blueprint.server.app as app_module

    original_peer = app_module.peer_of

    def peer_spy(request: object) -> str:
        calls.append("peer_of")
        return original_peer(request)  # type: ignore[arg-type]
    monkeypatch.setattr(app_module, "peer_of", peer_spy)
    served = counting(live)
    with raw(live) as (sock, reader):
        for _ in range(3):
            sock.sendall(post())
            assert reader.answer().status == 200
    with _client() as client:
        assert client.get(live.url + "/v1/models",
                          headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        assert client.get(live.url + "/admin/nodes",
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    assert served == ["chat_completions"] * 3
    assert calls == []
    with raw(live) as (sock, reader):  # the spies see a failure (so the test above could fail)
        sock.sendall(post(key="sk-guess"))
        assert reader.answer().status == 401
    assert calls == ["peer_of", "failed"]
