"""Grow or shrink the pool while running: watch a TOML file of ``[[nodes]]`` tables.

The file is polled by modification time (no inotify dependency, works on every filesystem and
in containers with mounted config). On a change it is parsed and diffed by node name against
what the watcher put in the balancer: new names are added, vanished names are drained and
removed, and a node whose table changed is replaced (the old one drained, the new one added).
A file that does not parse or validate is logged and ignored, so a half-saved edit never takes
nodes away.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import ValidationError

from blueprint.balancer.balancer import Balancer
from blueprint.balancer.settings import BalancerSettings
from blueprint.errors import BlueprintError
from blueprint.llm.client import LlmClient
from blueprint.llm.config import NodeConfig
from blueprint.llm.registry import create_client

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class SyncResult:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    error: str | None = None


def read_nodes_file(path: Path) -> list[NodeConfig]:
    """Parse ``[[nodes]]`` tables; raises ValueError on a broken file or duplicate names."""
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    configs = [NodeConfig.model_validate(table) for table in data.get("nodes", [])]
    names = [config.node_name for config in configs]
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate node names in {path}")
    return configs


class NodesFileWatcher:
    """Keeps the balancer's nodes in line with a TOML file (``balancer.nodes_file``)."""

    def __init__(self, balancer: Balancer, path: str | Path, *, interval_s: float = 2.0,
                 factory: Callable[[NodeConfig], LlmClient] = create_client) -> None:
        self.balancer = balancer
        self.path = Path(path)
        self.interval_s = interval_s
        self.factory = factory
        self._managed: dict[str, NodeConfig] = {}
        self._mtime: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Apply the file once now, then poll it in the background."""
        await self.poll()
        self._task = asyncio.create_task(self._loop(), name="balancer-nodes-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def poll(self) -> SyncResult | None:
        """Sync if the file changed since the last poll (None when it did not)."""
        try:
            mtime = (await asyncio.to_thread(self.path.stat)).st_mtime_ns
        except FileNotFoundError:
            log.warning("nodes_file_missing", path=str(self.path))
            return None
        if mtime == self._mtime:
            return None
        self._mtime = mtime
        return await self.sync()

    async def sync(self) -> SyncResult:
        result = SyncResult()
        try:
            configs = await asyncio.to_thread(read_nodes_file, self.path)
        except (OSError, ValueError, tomllib.TOMLDecodeError, ValidationError) as exc:
            result.error = str(exc)
            log.error("nodes_file_invalid", path=str(self.path), error=result.error)
            return result
        wanted = {config.node_name: config for config in configs}
        existing = {node.name: node for node in self.balancer.nodes()}
        for name in list(self._managed):
            if name not in wanted:
                await self._remove(name, result.removed)
        for name, config in wanted.items():
            known = self._managed.get(name)
            if known is None and name in existing:
                if existing[name].config == config:
                    self._managed[name] = config  # already there from the main config: adopt
                    continue
                await self._remove(name, result.replaced)
            elif known is not None:
                if known == config:
                    continue
                await self._remove(name, result.replaced)
            try:
                await self.balancer.add_node(self.factory(config), config)
            except BlueprintError as exc:
                log.error("nodes_file_add_failed", node=name, error=exc.message)
                continue
            self._managed[name] = config
            if name not in result.replaced:
                result.added.append(name)
        if result.added or result.removed or result.replaced:
            log.info("nodes_file_applied", added=result.added, removed=result.removed,
                     replaced=result.replaced)
        return result

    async def _remove(self, name: str, bucket: list[str]) -> None:
        self._managed.pop(name, None)
        try:
            await self.balancer.remove_node(name)
        except BlueprintError as exc:
            log.warning("nodes_file_remove_failed", node=name, error=exc.message)
            return
        bucket.append(name)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
            except Exception as exc:  # keep watching whatever one pass did
                log.error("nodes_file_poll_failed", error=str(exc))


async def start_watcher(balancer: Balancer, settings: BalancerSettings) -> NodesFileWatcher | None:
    """Start watching ``settings.nodes_file`` when one is configured (None otherwise). The
    caller closes the returned watcher on shutdown, before closing the balancer."""
    if settings.nodes_file is None:
        return None
    watcher = NodesFileWatcher(balancer, settings.nodes_file, interval_s=settings.watch_interval_s)
    await watcher.start()
    log.info("nodes_file_watching", path=str(watcher.path), interval_s=watcher.interval_s)
    return watcher
