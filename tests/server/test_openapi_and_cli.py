"""The OpenAPI document matches the app's router both ways; ``python -m blueprint serve`` runs
and shuts down on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from blueprint.balancer import Balancer
from blueprint.server import ServerSettings, create_app
from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions

SECRET = "sk-serve-secret-4242"


def _app_routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        routes.add((route.method.lower(), route.resource.canonical))  # type: ignore[union-attr]
    return routes


async def test_openapi_document_matches_the_router() -> None:
    balancer = Balancer([])
    app = create_app(balancer, ServerSettings())
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/openapi.json")
        assert response.status == 200
        doc = await response.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == _app_routes(app)
    schemas = doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            statuses = set(op["responses"])
            assert any(s.startswith("2") for s in statuses), (method, path)
            assert "500" in statuses, (method, path)
            for status, spec in op["responses"].items():
                for media in spec.get("content", {}).values():
                    ref = media.get("schema", {}).get("$ref")
                    if ref:
                        assert ref.split("/")[-1] in schemas, ref
                if not status.startswith("2"):
                    assert spec["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
            if op.get("security"):
                assert "401" in statuses, (method, path)
            body = op.get("requestBody")
            if body:
                assert body["content"]["application/json"]["schema"]["$ref"].split("/")[-1] in schemas
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "401", "404", "413", "429", "503"} <= set(chat["responses"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert doc["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] \
        == {"$ref": "#/components/schemas/ProviderModelList"}


@pytest.mark.slow
async def test_serve_command_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    async with EmulatedBackend(EmulatedOptions(model="emu", trivial=True)) as backend:
        config = tmp_path / "operator.toml"
        config.write_text(textwrap.dedent(f"""
            [server]
            api_keys = ["{SECRET}"]
            [[nodes]]
            name = "emu"
            engine = "openai"
            model = "emu"
            base_url = "{backend.base_url}"
        """))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("API_KEYS", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "blueprint", "serve", "--config", str(config), "--port", "0",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.startswith(b"READY "), line
            port = int(line.split()[1])
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                assert (await client.get("/v1/models")).status_code == 401
                answer = await client.post(
                    "/v1/chat/completions", headers={"Authorization": f"Bearer {SECRET}"},
                    json={"model": "emu", "messages": [{"role": "user", "content": "x"}]})
                assert answer.status_code == 200 and answer.json()["model"] == "emu"
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
        assert SECRET not in stderr
