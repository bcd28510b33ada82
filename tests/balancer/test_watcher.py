"""The nodes-file watcher: add, replace and remove nodes from a TOML file while running."""

from __future__ import annotations

from pathlib import Path

from balancer_fakes import FakeClient, chat_request

from blueprint.balancer import Balancer, BalancerSettings
from blueprint.balancer.watcher import NodesFileWatcher
from blueprint.llm.config import NodeConfig


def write(path: Path, *names: str, batch: int = 4) -> None:
    tables = [f'[[nodes]]\nname = "{n}"\nengine = "openai"\nmodel = "m"\n'
              f'base_url = "http://127.0.0.1:9/v1"\nmax_batch_size = {batch}\n' for n in names]
    path.write_text("\n".join(tables))


async def test_watcher_applies_file_changes(tmp_path: Path) -> None:
    made: list[FakeClient] = []

    def factory(config: NodeConfig) -> FakeClient:
        client = FakeClient(config.node_name)
        made.append(client)
        return client

    nodes_file = tmp_path / "nodes.toml"
    write(nodes_file, "a", "b")
    balancer = Balancer([], BalancerSettings(strategy="round_robin"))
    await balancer.start()
    watcher = NodesFileWatcher(balancer, nodes_file, interval_s=3600, factory=factory)
    try:
        await watcher.start()
        assert sorted(n.name for n in balancer.nodes()) == ["a", "b"]
        assert (await balancer.chat(chat_request())).choices[0].message.content in {"a", "b"}
        assert await watcher.poll() is None  # unchanged

        write(nodes_file, "b", "c", batch=8)
        result = await watcher.sync()
        assert result.added == ["c"] and result.removed == ["a"] and result.replaced == ["b"]
        assert sorted(n.name for n in balancer.nodes()) == ["b", "c"]
        assert balancer.node("b").limit == 8
        assert made[0].closed  # removed node's client closed

        nodes_file.write_text("[[nodes]]\nthis is not toml")
        result = await watcher.sync()
        assert result.error and sorted(n.name for n in balancer.nodes()) == ["b", "c"]
    finally:
        await watcher.close()
        await balancer.close()
