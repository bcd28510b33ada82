"""Security: authentication on every route that needs it, no public bind without keys, secrets
kept out of logs and error messages, private key files, and the per-key rate limit.

Decision on open routes: ``/health``, ``/ready``, ``/metrics`` and ``/openapi.json`` answer
without a key (probes and Prometheus scrapers carry none; none of them shows a secret or a
prompt, which the tests below check), and ``/v1/quote`` (chain users pricing a job hold no API
key). Everything else needs a key when keys are configured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from reliability_support import (
    API_KEY,
    MODEL,
    REPO_ROOT,
    BackendProcess,
    ThreadServer,
    openai_node,
    server_settings,
)

from blueprint.devnet.stack import write_config
from blueprint.server import ServerSettings, start_server
from blueprint.server.responses import UnsafeBindError
from blueprint.server.runner import check_exposure
from blueprint.tangle.keystore import KeystoreError, load_operator, write_sdk_key, write_v3_key

#: ``quote`` is open on purpose: on-chain callers ask for signed prices and hold no API key.
#: A new route missing from this set and answering without a key fails the test below.
OPEN_ROUTES = {"health", "ready", "metrics", "openapi", "quote"}
OTHER_KEY = "sk-reliability-second-key-8e1d"
ADMIN_KEY = "sk-reliability-admin-key-04f2"
UPSTREAM_KEY = "sk-upstream-secret-b7c94e21a0"
OPERATOR_KEY = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
PASSWORD = "correct-horse-battery-staple-91"


@pytest.fixture
def live(backend_process: Any, thread_server: Any) -> ThreadServer:
    backend = backend_process("--trivial")
    return thread_server([openai_node("emu-node", backend.base_url, api_key=UPSTREAM_KEY)],
                         server_settings(api_keys=[API_KEY, OTHER_KEY], rate_limit_per_minute=60,
                                         rate_limit_burst=3,
                                         # every route is tried with wrong keys below; the bound on
                                         # failed keys is tests/server/test_auth_failures.py's
                                         auth_failures_per_minute=None))


def _routes(live: ThreadServer) -> list[tuple[str, str, str]]:
    """Every route the running app serves (method, path with a sample parameter, name)."""
    assert live.server is not None
    out = []
    for route in live.server.runner.app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "").replace("{name}", "emu-node")
        out.append((route.method, path, route.name or ""))
    return out


def test_every_route_but_the_probes_needs_a_key(live: ThreadServer) -> None:
    routes = _routes(live)
    assert {name for _, _, name in routes} >= OPEN_ROUTES | {"chat_completions", "admin_add_node"}
    with httpx.Client(base_url=live.url, timeout=10.0) as client:
        for method, path, name in routes:
            for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": API_KEY},
                            {"Authorization": "Basic " + API_KEY}):
                reply = client.request(method, path, headers=headers, json={})
                if name in OPEN_ROUTES:
                    assert reply.status_code != 401, (method, path)
                else:
                    assert reply.status_code == 401, (method, path, headers, reply.status_code)
                    assert reply.json()["error"]["type"] == "authentication_error"
        # with the key the guard lets the request through (any answer but 401)
        reply = client.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        assert reply.status_code == 200 and reply.json()["data"][0]["id"] == MODEL


def test_open_routes_show_no_secret(live: ThreadServer) -> None:
    with httpx.Client(base_url=live.url, timeout=10.0) as client:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        client.post("/v1/chat/completions", headers=auth, json={
            "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "a private prompt"}]})
        texts = [client.get(path).text for path in ("/health", "/ready", "/metrics", "/openapi.json")]
        texts.append(client.get("/admin/nodes", headers=auth).text)
    for text in texts:
        for secret in (API_KEY, OTHER_KEY, UPSTREAM_KEY, "a private prompt"):
            assert secret not in text


def test_per_key_rate_limit(live: ThreadServer) -> None:
    body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(base_url=live.url, timeout=10.0) as client:
        key1, key2 = {"Authorization": f"Bearer {API_KEY}"}, {"Authorization": f"Bearer {OTHER_KEY}"}
        first = [client.post("/v1/chat/completions", json=body, headers=key1) for _ in range(5)]
        statuses = [r.status_code for r in first]
        assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429], statuses
        assert int(first[3].headers["Retry-After"]) >= 1
        assert first[3].json()["error"]["code"] == "rate_limit_exceeded"
        other = client.post("/v1/chat/completions", json=body, headers=key2)
        assert other.status_code == 200  # the limit is per key: the other key is not starved
        # unauthenticated floods do not spend a key's budget, and are refused before the limiter
        for _ in range(5):
            assert client.post("/v1/chat/completions", json=body).status_code == 401


async def test_public_bind_without_keys_is_refused() -> None:
    with pytest.raises(UnsafeBindError):
        await start_server(None, ServerSettings(host="0.0.0.0", port=0, api_keys=[]))  # type: ignore[arg-type]
    check_exposure(ServerSettings(host="0.0.0.0", api_keys=[API_KEY]))  # keys: allowed
    check_exposure(ServerSettings(host="0.0.0.0", allow_public_without_auth=True))  # told to: allowed
    check_exposure(ServerSettings(host="127.0.0.1"))  # loopback: allowed
    with pytest.raises(UnsafeBindError):
        check_exposure(ServerSettings(host="::", api_keys=[]))


def test_serve_command_refuses_public_bind(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("API_KEYS", None)
    proc = subprocess.run([sys.executable, "-m", "blueprint", "serve", "--host", "0.0.0.0", "--port", "0"],
                          env=env, cwd=tmp_path, capture_output=True, timeout=60, text=True)
    assert proc.returncode != 0
    assert "READY" not in proc.stdout
    assert "api_key" in (proc.stdout + proc.stderr).lower() or "API_KEYS" in proc.stderr


@pytest.fixture
def serve_process(tmp_path: Path, backend_process: Any) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """``python -m blueprint serve -vv`` with known secrets; yields (process, url, log file)."""
    backend: BackendProcess = backend_process("--trivial")
    config = write_config(tmp_path / "config.toml", [
        {"name": "emu-node", "engine": "openai", "model": MODEL, "base_url": backend.base_url,
         "api_key": UPSTREAM_KEY}])
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "API_KEYS": f"{API_KEY},{OTHER_KEY}",
           "SERVER__ADMIN_KEYS": ADMIN_KEY}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "blueprint", "serve", "--config", str(config),
                                 "--port", "0", "-vv"], env=env, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=log_file)
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            url = None
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if line.startswith("READY "):
                    url = f"http://127.0.0.1:{int(line.split()[1])}"
                    break
                if not line and proc.poll() is not None:
                    break
            assert url is not None, log_path.read_text()
            yield proc, url, log_path
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def test_secrets_never_reach_logs_or_errors(serve_process: tuple[subprocess.Popen[str], str, Path]) -> None:
    """A full run of ``serve`` at debug level: wrong keys, good keys, errors, streams, admin calls,
    then shutdown. Neither the configured keys, the upstream key nor a presented wrong key appear
    in its output or in any response."""
    proc, url, log_path = serve_process
    wrong = "sk-presented-but-wrong-3c9a"
    good = {"Authorization": f"Bearer {API_KEY}"}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    bodies: list[str] = []
    chat = {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=url, timeout=10.0) as client:
        requests: list[tuple[str, str, dict[str, str], Any]] = [
            ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {wrong}"}, chat),
            ("POST", "/v1/chat/completions", {"Authorization": wrong}, chat),
            ("POST", "/v1/chat/completions", good, chat),
            ("POST", "/v1/chat/completions", good, {**chat, "stream": True}),
            ("POST", "/v1/chat/completions", good, {**chat, "model": "nope"}),
            ("POST", "/v1/chat/completions", good, {"model": MODEL, "messages": "not a list"}),
            ("POST", "/v1/completions", good, {"model": MODEL, "prompt": "x " * 20000, "max_tokens": 4}),
            ("GET", "/admin/nodes", admin, None),
            ("POST", "/admin/nodes", admin, {"name": "bad", "engine": "openai", "model": "m2",
                                            "base_url": "http://127.0.0.1:9/v1", "api_key": UPSTREAM_KEY}),
            ("GET", "/metrics", {}, None),
        ]
        for method, path, headers, body in requests:
            reply = client.request(method, path, headers=headers, json=body)
            bodies.append(reply.text + json.dumps(dict(reply.headers)))
        # the added node with an unreachable upstream fails: its errors must not carry the key either
        client.post("/v1/chat/completions", headers=good, json={**chat, "model": "m2"})
        bodies.append(client.get("/admin/nodes", headers=admin).text)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    log_text = log_path.read_text()
    assert "http api listening" in log_text  # the log really is the server's, at debug level
    for secret in (API_KEY, OTHER_KEY, ADMIN_KEY, UPSTREAM_KEY, wrong):
        assert secret not in log_text, f"{secret[:6]}... in the log"
        for body in bodies:
            assert secret not in body, f"{secret[:6]}... in a response"


def test_key_files_readable_by_others_are_refused(tmp_path: Path) -> None:
    path = write_sdk_key(tmp_path / "keystore", OPERATOR_KEY)
    assert load_operator(tmp_path / "keystore").address  # mode 600: fine
    for mode in (0o644, 0o640, 0o604, 0o660):
        os.chmod(path, mode)
        with pytest.raises(KeystoreError) as info:
            load_operator(tmp_path / "keystore")
        assert "chmod 600" in str(info.value) and OPERATOR_KEY[2:] not in str(info.value)
    v3 = write_v3_key(tmp_path / "v3" / "key.json", OPERATOR_KEY, PASSWORD, kdf="pbkdf2", iterations=2)
    os.chmod(v3, 0o644)
    with pytest.raises(KeystoreError):
        load_operator(v3, password=PASSWORD)
    os.chmod(v3, 0o600)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    os.chmod(password_file, 0o644)
    with pytest.raises(KeystoreError) as info:
        load_operator(v3, password_file=password_file)
    assert PASSWORD not in str(info.value)
    os.chmod(password_file, 0o600)
    assert load_operator(v3, password_file=password_file).address


def test_daemon_keystore_failures_keep_secrets_out(tmp_path: Path) -> None:
    """``run`` with a wrong V3 password, then a world-readable key: it exits with an error that
    names the problem and shows neither the password nor the key."""
    v3 = write_v3_key(tmp_path / "ks" / "key.json", OPERATOR_KEY, PASSWORD, kdf="pbkdf2", iterations=2)
    base = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HTTP_RPC_URL": "http://127.0.0.1:9",
            "SERVICE_ID": "1", "BLUEPRINT_ID": "1", "DATA_DIR": str(tmp_path / "data"),
            "KEYSTORE_URI": str(v3), "API_KEYS": API_KEY}
    outputs = []
    for env in ({**base, "KEYSTORE_PASSWORD": PASSWORD + "-wrong"}, {**base, "KEYSTORE_PASSWORD": PASSWORD}):
        if env["KEYSTORE_PASSWORD"] == PASSWORD:
            os.chmod(v3, 0o644)
        proc = subprocess.run([sys.executable, "-m", "blueprint", "run", "-vv"], env=env, cwd=tmp_path,
                              capture_output=True, timeout=90, text=True)
        assert proc.returncode != 0
        outputs.append(proc.stdout + proc.stderr)
    assert "password" in outputs[0].lower()
    assert "chmod 600" in outputs[1]
    for text in outputs:
        for secret in (PASSWORD, OPERATOR_KEY[2:], API_KEY):
            assert secret not in text


def test_config_command_hides_every_secret(tmp_path: Path) -> None:
    """Row 10: ``blueprint config`` printed nodes' upstream ``api_key`` (and any secret in a
    node's options) in clear."""
    config = write_config(tmp_path / "config.toml", [
        {"name": "emu", "engine": "openai", "model": MODEL, "base_url": "http://127.0.0.1:9/v1",
         "api_key": UPSTREAM_KEY, "options": {"hf_token": "hf_secret_token_77", "embeddings": True}}])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "API_KEYS": API_KEY, "KEYSTORE_PASSWORD": PASSWORD}
    proc = subprocess.run([sys.executable, "-m", "blueprint", "config", "--config", str(config)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for secret in (UPSTREAM_KEY, "hf_secret_token_77", API_KEY, PASSWORD):
        assert secret not in proc.stdout + proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["nodes"][0]["api_key"] == "**********" and shown["nodes"][0]["options"]["embeddings"] is True
