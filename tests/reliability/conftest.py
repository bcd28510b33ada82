"""Fixtures of the fault tests (the helpers live in ``reliability_support``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from reliability_support import MODEL, BackendProcess, ThreadServer, server_settings

from blueprint.balancer import BalancerSettings
from blueprint.llm.config import NodeConfig
from blueprint.server import ServerSettings


@pytest.fixture
def backend_process() -> Iterator[Callable[..., BackendProcess]]:
    """Factory of emulated backend subprocesses; all are stopped after the test."""
    made: list[BackendProcess] = []

    def make(*args: str, model: str = MODEL) -> BackendProcess:
        proc = BackendProcess(*args, model=model).start()
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop()


@pytest.fixture
def thread_server() -> Iterator[Callable[..., ThreadServer]]:
    """Factory: ``make(nodes, settings=None, balancer=None)``; every server is stopped after."""
    made: list[ThreadServer] = []

    def make(nodes: list[NodeConfig], settings: ServerSettings | None = None,
             balancer: BalancerSettings | None = None) -> ThreadServer:
        live = ThreadServer(nodes, settings or server_settings(), balancer).start()
        made.append(live)
        return live

    yield make
    for live in made:
        live.stop()
