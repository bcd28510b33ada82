"""A real API server on a loopback port, run on its own event loop in a thread, so the blocking
``openai`` client and async clients of the test's loop can both talk to it (the thread and loop
handling is :class:`tests.api_server_thread.ApiServerThread`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from blueprint.balancer import Balancer
from blueprint.llm.config import NodeConfig
from blueprint.llm.registry import create_client
from blueprint.server import ServerSettings, start_server
from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions
from tests.api_server_thread import ApiServerThread
from tests.devices import TEST_DEVICE

API_KEY = "sk-test-0123456789abcdef"
TINY = "tiny"


class LiveServer(ApiServerThread):
    """Backend (optional) + balancer + API server on a private loop in a daemon thread."""

    def __init__(self, nodes: Callable[[str | None], list[NodeConfig]], settings: ServerSettings,
                 backend: EmulatedOptions | None = None) -> None:
        super().__init__("live-server")
        self._nodes, self._settings, self._backend_options = nodes, settings, backend
        self.backend: EmulatedBackend | None = None

    async def _start(self) -> None:
        base_url = None
        if self._backend_options is not None:
            self.backend = EmulatedBackend(self._backend_options)
            await self.backend.start()
            base_url = self.backend.base_url
        configs = self._nodes(base_url)
        self.balancer = Balancer([create_client(c) for c in configs],
                                 node_configs={c.node_name: c for c in configs})
        await self.balancer.start()
        self.server = await start_server(self.balancer, self._settings)

    async def _stop(self) -> None:
        await super()._stop()
        if self.backend is not None:
            await self.backend.stop()

    def node(self) -> Any:
        assert self.balancer is not None
        return self.balancer.nodes()[0]


def settings(**overrides: Any) -> ServerSettings:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "api_keys": [API_KEY],
                            "stream_keepalive_s": 0.05, "shutdown_timeout_s": 1.0}
    base.update(overrides)
    return ServerSettings(**base)


def emulated_node(model: str = "emu", **overrides: Any) -> Callable[[str | None], list[NodeConfig]]:
    def build(base_url: str | None) -> list[NodeConfig]:
        return [NodeConfig(name="emu-node", engine="openai", model=model, base_url=base_url, **overrides)]
    return build


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    """The tiny transformers model behind the API (loaded once per session)."""
    config = NodeConfig(name="tiny-node", engine="transformers", model=TINY, path=str(tiny_model_dir),
                        device=TEST_DEVICE, dtype="float32", max_batch_size=4)
    live = LiveServer(lambda _: [config], settings()).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def emulated_server() -> Iterator[Callable[..., LiveServer]]:
    """Factory: an API server over the emulated backend with given options; stopped after."""
    started: list[LiveServer] = []

    def make(backend: EmulatedOptions | None = None, node_overrides: dict[str, Any] | None = None,
             **server_overrides: Any) -> LiveServer:
        live = LiveServer(emulated_node(**(node_overrides or {})), settings(**server_overrides),
                          backend or EmulatedOptions(model="emu", trivial=True)).start()
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()
