"""Error shapes and statuses, auth (and that no key reaches a log), probes, metrics, admin."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest
import structlog

from blueprint.server import ServerSettings, check_exposure
from blueprint.server.responses import UnsafeBindError
from tests.server.conftest import API_KEY, TINY, LiveServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN_KEY = "sk-admin-test-77aa01"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code
    return error


def test_error_shapes(tiny_server: LiveServer) -> None:
    url = tiny_server.url
    with httpx.Client(timeout=10, headers=AUTH) as client:
        _error(client.post(url + "/v1/chat/completions", content=b"{not json",
                           headers={"Content-Type": "application/json"}), 400, "invalid_request")
        err = _error(client.post(url + "/v1/chat/completions", json={"model": TINY, "messages": []}), 400)
        assert err["param"] == "messages"
        _error(client.post(url + "/v1/chat/completions",
                           json={"model": TINY, "messages": [{"role": "user", "content": "x"}],
                                 "temperature": 9}), 400)
        _error(client.post(url + "/v1/completions", json={"model": "nope", "prompt": "x"}), 404,
               "model_not_found")
        _error(client.post(url + "/v1/chat/completions", content=b"x" * (2 << 20)), 413, "request_too_large")
        long_prompt = "hello world " * 5000  # far beyond the tiny model's context
        _error(client.post(url + "/v1/completions", json={"model": TINY, "prompt": long_prompt}), 413,
               "context_length_exceeded")
        _error(client.get(url + "/v1/nothing"), 404, "not_found")
        _error(client.get(url + "/v1/chat/completions"), 405, "method_not_allowed")


def test_auth_rejections_and_no_key_in_logs(tiny_server: LiveServer,
                                            caplog: pytest.LogCaptureFixture) -> None:
    wrong = "sk-wrong-key-that-must-not-be-logged"
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs, httpx.Client(timeout=10) as client:
        _error(client.get(tiny_server.url + "/v1/models"), 401, "invalid_api_key")
        _error(client.get(tiny_server.url + "/v1/models", headers={"Authorization": f"Bearer {wrong}"}),
               401, "invalid_api_key")
        _error(client.get(tiny_server.url + "/v1/models", headers={"Authorization": wrong}), 401)
        _error(client.post(tiny_server.url + "/v1/chat/completions",
                           headers={"Authorization": f"Bearer {wrong}"},
                           json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}), 401)
        assert client.get(tiny_server.url + "/v1/models", headers=AUTH).status_code == 200
        assert client.get(tiny_server.url + "/health").status_code == 200  # probes need no key
    logged = repr(logs) + caplog.text
    assert wrong not in logged and API_KEY not in logged
    assert API_KEY not in repr(ServerSettings(api_keys=[API_KEY]))


def test_probes_and_metrics(tiny_server: LiveServer) -> None:
    with httpx.Client(timeout=10) as client:
        assert client.get(tiny_server.url + "/health").json() == {"status": "ok"}
        ready = client.get(tiny_server.url + "/ready")
        assert ready.status_code == 200 and ready.json()["healthy_nodes"] == ["tiny-node"]
        client.post(tiny_server.url + "/v1/completions", headers=AUTH,
                    json={"model": TINY, "prompt": "hi", "max_tokens": 2})
        text = client.get(tiny_server.url + "/metrics").text
    assert 'blueprint_http_requests_total{model="tiny",route="completions",status="200"}' in text
    assert 'request_duration_seconds_bucket{le="0.001",model="tiny",route="completions"}' in text
    assert 'blueprint_node_in_flight{node="tiny-node"} 0.0' in text
    assert 'blueprint_node_healthy{node="tiny-node"} 1.0' in text
    assert "blueprint_http_in_flight" in text


def test_not_ready_without_nodes_and_admin_lifecycle(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(admin_keys=[ADMIN_KEY])
    assert live.backend is not None
    with httpx.Client(timeout=10) as client:
        _error(client.get(live.url + "/admin/nodes"), 401)
        _error(client.get(live.url + "/admin/nodes", headers=AUTH), 401)  # an API key is not admin
        nodes = client.get(live.url + "/admin/nodes", headers=ADMIN).json()["data"]
        assert [row["name"] for row in nodes] == ["emu-node"]
        added = client.post(live.url + "/admin/nodes", headers=ADMIN, json={
            "name": "emu-2", "engine": "openai", "model": "emu", "base_url": live.backend.base_url})
        assert added.status_code == 201, added.text
        assert added.json() == {"name": "emu-2", "models": ["emu"]}
        _error(client.post(live.url + "/admin/nodes", headers=ADMIN, json={"engine": "openai"}), 400)
        _error(client.post(live.url + "/admin/nodes/ghost/drain", headers=ADMIN), 404, "node_not_found")
        for name in ("emu-node", "emu-2"):
            drained = client.post(live.url + f"/admin/nodes/{name}/drain", headers=ADMIN)
            assert drained.status_code == 200 and drained.json()["draining"] is True
        not_ready = client.get(live.url + "/ready")
        assert not_ready.status_code == 503 and not_ready.json()["healthy_nodes"] == []
        _error(client.post(live.url + "/v1/chat/completions", headers=AUTH, json={
            "model": "emu", "messages": [{"role": "user", "content": "x"}]}), 503)
        for name in ("emu-node", "emu-2"):
            assert client.delete(live.url + f"/admin/nodes/{name}", headers=ADMIN).status_code == 200
        assert client.get(live.url + "/admin/nodes", headers=ADMIN).json()["data"] == []
        _error(client.delete(live.url + "/admin/nodes/emu-2", headers=ADMIN), 404)


def test_admin_off_without_admin_keys(emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(api_keys=[])
    with httpx.Client(timeout=10) as client:
        assert client.get(live.url + "/v1/models").status_code == 200  # open API on loopback
        _error(client.get(live.url + "/admin/nodes"), 401, "admin_disabled")


def test_public_bind_needs_a_key_or_an_explicit_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_KEYS", raising=False)
    with pytest.raises(UnsafeBindError):
        check_exposure(ServerSettings(host="0.0.0.0"))
    check_exposure(ServerSettings(host="0.0.0.0", allow_public_without_auth=True))
    check_exposure(ServerSettings(host="0.0.0.0", api_keys=["k"]))
    check_exposure(ServerSettings(host="127.0.0.1"))
    check_exposure(ServerSettings(host="::1"))
    monkeypatch.setenv("API_KEYS", "a, b")
    assert ServerSettings(host="0.0.0.0").api_key_values() == ["a", "b"]
    assert ServerSettings(api_keys='["x"]').api_key_values() == ["x"]
