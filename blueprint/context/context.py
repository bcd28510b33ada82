"""The shared context: everything a handler, the daemon and the HTTP API share, built once.

Built from :class:`blueprint.config.Settings`: the LLM clients (one per ``[[nodes]]`` table), the
balancer over them, the job ledger under ``DATA_DIR``, the metrics, and on the chain side the
operator's key (from ``KEYSTORE_URI``), a web3 client and the transaction manager that owns the
operator's nonce. Handlers only use ``balancer``; the chain parts are for the daemon.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from blueprint.balancer import Balancer
from blueprint.config import Settings
from blueprint.context.metrics import JobMetrics
from blueprint.llm.client import LlmClient
from blueprint.llm.registry import create_client

if TYPE_CHECKING:
    from blueprint.balancer.watcher import NodesFileWatcher
    from blueprint.tangle.chain import ChainClient
    from blueprint.tangle.keystore import Operator
    from blueprint.tangle.ledger import Ledger
    from blueprint.tangle.txmanager import TxManager

log = structlog.get_logger(__name__)


@dataclass
class Context:
    """The operator's shared state. Create with :meth:`create`, release with :meth:`close`."""

    settings: Settings
    clients: list[LlmClient]
    balancer: Balancer
    metrics: JobMetrics = field(default_factory=JobMetrics)
    ledger: Ledger | None = None
    chain: ChainClient | None = None
    operator: Operator | None = None
    txm: TxManager | None = None
    #: Watches ``balancer.nodes_file`` (when set) so nodes can be added and removed live.
    watcher: NodesFileWatcher | None = None

    @classmethod
    async def create(cls, settings: Settings, *, with_chain: bool = True, start_balancer: bool = True,
                     clients: list[LlmClient] | None = None) -> Context:
        """Build and start every part. ``with_chain=False`` builds only the LLM side (the HTTP
        API alone, or tests); ``clients`` replaces the nodes of the settings (tests, benchmarks).

        On failure, what was already started is closed again before the error propagates.
        """
        if clients is None:
            clients = [create_client(node) for node in settings.nodes]
        configs = {client.name: node for client, node in zip(clients, settings.nodes, strict=False)}
        balancer = Balancer(clients, settings.balancer, node_configs=configs)
        ctx = cls(settings=settings, clients=clients, balancer=balancer)
        try:
            if with_chain:
                await ctx._open_chain()
            if start_balancer:
                from blueprint.balancer.watcher import start_watcher

                await balancer.start()
                ctx.watcher = await start_watcher(balancer, settings.balancer)
        except BaseException:
            await ctx.close()
            raise
        log.info("context.ready", nodes=[c.name for c in clients],
                 models=sorted({m.id for m in balancer.models()}),
                 operator=ctx.operator.address if ctx.operator else None)
        return ctx

    async def _open_chain(self) -> None:
        from blueprint.tangle.chain import ChainClient
        from blueprint.tangle.keystore import load_operator_from_settings
        from blueprint.tangle.ledger import Ledger
        from blueprint.tangle.txmanager import TxManager

        self.operator = load_operator_from_settings(self.settings)
        self.ledger = await Ledger.open(self.settings.data_dir)
        self.chain = ChainClient.from_settings(self.settings)
        self.txm = TxManager(self.chain.w3, self.operator.account)

    async def close(self) -> None:
        """Close the balancer (and its clients), the chain client and the ledger. Idempotent."""
        if self.watcher is not None:
            with contextlib.suppress(Exception):
                await self.watcher.close()
            self.watcher = None
        with contextlib.suppress(Exception):
            await self.balancer.close()
        if self.chain is not None:
            with contextlib.suppress(Exception):
                await self.chain.close()
            self.chain = None
        if self.ledger is not None:
            with contextlib.suppress(Exception):
                await self.ledger.close()
            self.ledger = None

    async def __aenter__(self) -> Context:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
