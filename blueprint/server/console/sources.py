"""What the console reads, as small Protocols: the server package never imports the chain side.

``run`` hands the console a :class:`ChainView` (built in :mod:`blueprint.context.console_chain`
over the ledger, producer, transaction manager and heartbeats); ``serve`` has none, and the chain
panel says so. Every value is plain JSON data, ready to send.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

JsonObject = dict[str, Any]


@runtime_checkable
class ChainView(Protocol):
    """The chain side of the operator, as the console shows it."""

    async def summary(self) -> JsonObject:
        """Service, operator, cursor and head (lag), ledger counts per state, heartbeats sent,
        transactions, the operator's balance and the rewards the service has paid it (wei)."""
        ...

    async def recent_jobs(self, limit: int) -> list[JsonObject]:
        """The newest jobs of the ledger, newest first: ids, state, reason, timings, tx hashes,
        and who answered (us, or another operator when the ledger says so)."""
        ...

    async def job(self, service_id: int, call_id: int) -> JsonObject | None:
        """One job in full (request and result previews included), or None if unknown."""
        ...


@runtime_checkable
class QuoteLog(Protocol):
    """The quotes this node signed lately (:class:`blueprint.quoting.quoter.Quoter` in ``run``)."""

    def recent_quotes(self, limit: int) -> list[JsonObject]:
        """Up to ``limit`` quotes, newest first: time, model, prompt and max tokens, price (wei, as
        a string), expiry (unix seconds) and requester."""
        ...
