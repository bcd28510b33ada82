"""Set-up pieces shared by every test that runs on anvil with the TNT Core state (the ``tangle``,
``e2e`` and ``reliability`` packages), so each fixture keeps its own scope and shape while the
skip rule, the service set-up and the daemon's start and stop live in one place.

Tests skip (not fail) only when anvil or the TNT Core state is not installed at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blueprint.devnet.anvil import DEV_KEYS, Anvil, DevnetError, find_anvil, find_tnt_core_state, start_anvil
from blueprint.devnet.setup import DevService
from blueprint.devnet.stack import DaemonProcess, chain_client, create_service


@dataclass
class DaemonStack:
    """A chain, a service on it and one daemon serving it (what a module-scoped fixture yields)."""

    anvil: Anvil
    service: DevService
    daemon: DaemonProcess


def require_devnet() -> None:
    """Skip the calling test when anvil or the TNT Core state is missing: a machine without the
    devnet cannot run these tests, which is not a failure of the code under test."""
    try:
        find_anvil()
        find_tnt_core_state()
    except DevnetError as exc:
        pytest.skip(f"no local devnet: {exc}")


@contextmanager
def devnet_anvil(**start_args: Any) -> Iterator[Anvil]:
    """A fresh anvil loaded with the LocalTestnet state (``start_anvil(**start_args)``), stopped
    on exit; skips first when the devnet is not installed. The caller's fixture picks the scope."""
    require_devnet()
    with start_anvil(**start_args) as node:
        yield node


def new_service(anvil: Anvil, keystore: Path) -> DevService:
    """A fresh blueprint + active service owned by ``DEV_KEYS[0]`` with a new operator whose key
    is written to ``keystore``; run in its own short-lived event loop so that sync, module-scoped
    fixtures can call it (the result is plain data)."""

    async def make() -> DevService:
        async with chain_client(anvil) as client:
            return await create_service(client, DEV_KEYS[0], keystore)

    return asyncio.run(make())


@contextmanager
def running_daemon(env: dict[str, str], log_path: Path, *,
                   stop_timeout: float = 60.0) -> Iterator[DaemonProcess]:
    """``python -m blueprint run`` with the manager's ``env``, yielded once it logged
    ``daemon.ready``; stopped (SIGTERM, killed after ``stop_timeout``) on exit, also when it
    never became ready, so no test leaves a daemon behind."""
    daemon = DaemonProcess(env, log_path).start()
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop(timeout=stop_timeout)
