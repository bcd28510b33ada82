"""Shared pieces of the fault tests (imported by the tests and by conftest.py): emulated
backends as killable subprocesses, and the real API server on a private event loop in a thread
(so blocking clients such as schemathesis and raw sockets can talk to it while the test drives
faults; the thread and loop handling is :class:`tests.api_server_thread.ApiServerThread`).

Everything binds 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from blueprint.balancer import Balancer, BalancerSettings
from blueprint.llm.config import NodeConfig
from blueprint.llm.registry import create_client
from blueprint.server import ServerSettings, start_server
from blueprint.server.app import create_app
from tests.api_server_thread import ApiServerThread

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-reliability-test-5f0c2a9e7d31"
MODEL = "emu"


class BackendProcess:
    """``python -m blueprint.testing.emulated_backend`` in a subprocess, so it can be killed -9 and
    restarted on the same port (a crashed and recovered vLLM server)."""

    def __init__(self, *args: str, model: str = MODEL) -> None:
        self.args = ["--model", model, *args]
        self.port = 0
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> BackendProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "blueprint.testing.emulated_backend", "--port", str(self.port),
             *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
            env=env, cwd=str(REPO_ROOT),
        )
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("READY "):
                self.port = int(line.split()[1])
                return self
            if not line and self.process.poll() is not None:
                break
        self.kill()
        raise RuntimeError(f"emulated backend did not start (args {self.args}, port {self.port})")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def kill(self) -> None:
        """SIGKILL: no graceful close, open connections are reset by the kernel."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


class ThreadServer(ApiServerThread):
    """Balancer + API server on a private event loop in a daemon thread."""

    def __init__(self, nodes: list[NodeConfig], settings: ServerSettings,
                 balancer_settings: BalancerSettings | None = None,
                 app_hook: Callable[[web.Application, Balancer], None] | None = None) -> None:
        """``app_hook`` may add to the app before it starts (e.g. enable signed quotes)."""
        super().__init__("rel-server")
        self.nodes, self.settings, self.balancer_settings = nodes, settings, balancer_settings
        self.app_hook = app_hook

    async def _start(self) -> None:
        self.balancer = Balancer([create_client(c) for c in self.nodes], self.balancer_settings,
                                 node_configs={c.node_name: c for c in self.nodes})
        await self.balancer.start()
        app = create_app(self.balancer, self.settings)
        if self.app_hook is not None:
            self.app_hook(app, self.balancer)
        self.server = await start_server(self.balancer, self.settings, app=app)


class ServeProcess:
    """``python -m blueprint serve --config FILE --port 0`` in a subprocess (the real command),
    with its stderr in ``log_path``; ``url`` once it printed ``READY <port>``."""

    def __init__(self, config: Path, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.command = [sys.executable, "-m", "blueprint", "serve", "--config", str(config), "--port", "0",
                        *args]
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 120.0) -> ServeProcess:
        with open(self.log_path, "w") as log_file:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=str(self.log_path.parent),
                                            text=True, stdout=subprocess.PIPE, stderr=log_file,
                                            stdin=subprocess.DEVNULL)
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("READY "):
                self.url = f"http://127.0.0.1:{int(line.split()[1])}"
                return self
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"serve did not start:\n{self.log_path.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def server_settings(**overrides: Any) -> ServerSettings:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "api_keys": [API_KEY],
                            "stream_keepalive_s": 0.2, "shutdown_timeout_s": 1.0}
    base.update(overrides)
    return ServerSettings(**base)


def openai_node(name: str, base_url: str, model: str = MODEL, **overrides: Any) -> NodeConfig:
    return NodeConfig(name=name, engine="openai", model=model, base_url=base_url, **overrides)
