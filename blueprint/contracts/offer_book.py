"""The service's operators and their offers, as the manager's views say, kept fresh.

Why a cache: the assignment rule needs, for every job, which of the service's operators offer the
job's model; reading the views per job would cost an RPC each. The book reads
``getServiceOffers(serviceId)`` once, then again whenever the manager emits an offer or membership
event (``OfferRegistered``, ``OfferUpdated``, ``EndpointUpdated``, ``OfferRemoved``,
``OperatorJoined``, ``OperatorLeft``; polled with ``eth_getLogs``) and every ``refresh_s`` as a
fallback. Every daemon of the service reads the same views, so all rank the same operators.

A blueprint without our manager (``address(0)``) has no offers on chain: every operator of the
service (``getServiceOperators``) is then taken to offer every model, and each daemon skips the
jobs whose model its own nodes do not serve.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import structlog
from eth_utils import keccak, to_checksum_address

from blueprint.contracts import manager_abi
from blueprint.contracts.manager import (
    OperatorOfferView,
    blueprint_manager,
    service_blueprint,
    service_offers,
)
from blueprint.contracts.offer import Offer
from blueprint.tangle.chain import ChainClient
from blueprint.tangle.events import uint_topic

log = structlog.get_logger(__name__)

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
#: Manager events after which the book is read again.
REFRESH_EVENTS = ("OfferRegistered", "OfferUpdated", "EndpointUpdated", "OfferRemoved", "OperatorJoined",
                  "OperatorLeft")


def _event_topics(names: tuple[str, ...]) -> list[str]:
    topics = []
    for item in manager_abi():
        if item["type"] == "event" and item["name"] in names:
            sig = f"{item['name']}({','.join(p['type'] for p in item['inputs'])})"
            topics.append("0x" + keccak(text=sig).hex())
    return topics


class AnyModel(frozenset[str]):
    """The models of an operator whose offer is unknown (no manager): it may serve any."""

    def __contains__(self, item: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class OfferBook:
    """Who serves what in one service. ``await start()`` reads it and follows the manager.

    Args:
        chain: a client on the service's chain.
        service_id: the service.
        manager: the blueprint's manager address (None or address(0): no offers on chain).
        poll_interval_s: how often the manager's events are polled.
        refresh_s: full re-read period, whatever the events said.
    """

    def __init__(self, chain: ChainClient, service_id: int, manager: str | None, *,
                 poll_interval_s: float = 1.0, refresh_s: float = 60.0) -> None:
        self.chain = chain
        self.service_id = service_id
        self.manager = None if manager is None or int(manager, 16) == 0 else to_checksum_address(manager)
        self.poll_interval_s = poll_interval_s
        self.refresh_s = refresh_s
        self.offers: dict[str, Offer | None] = {}
        self.version = 0
        self.loaded = False
        self._listeners: list[Callable[[OfferBook], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._next_block: int | None = None
        self._topics = _event_topics(REFRESH_EVENTS)

    @classmethod
    async def for_service(cls, chain: ChainClient, service_id: int, *, blueprint_id: int | None = None,
                          **kwargs: Any) -> OfferBook:
        """The book of ``service_id``, with the manager found through Tangle (the blueprint's)."""
        if blueprint_id is None:
            blueprint_id = await service_blueprint(chain, service_id)
        manager = await blueprint_manager(chain, blueprint_id)
        return cls(chain, service_id, manager, **kwargs)

    # --- reading -----------------------------------------------------------------------------

    def models_by_operator(self) -> dict[str, frozenset[str]]:
        """Operator -> the model ids it offers (``AnyModel`` when there is no manager)."""
        out: dict[str, frozenset[str]] = {}
        for operator, offer in self.offers.items():
            out[operator] = AnyModel() if offer is None else frozenset(m.model for m in offer.models)
        return out

    def offer_of(self, operator: str) -> Offer | None:
        return self.offers.get(to_checksum_address(operator))

    def completion_prices(self, model: str) -> dict[str, int]:
        """Operator -> its completion price for ``model`` (operators offering it only)."""
        prices = {}
        for operator, offer in self.offers.items():
            terms = offer.model(model) if offer is not None else None
            if terms is not None:
                prices[operator] = terms.price_per_completion_token
        return prices

    def on_change(self, listener: Callable[[OfferBook], None]) -> None:
        """Call ``listener(book)`` after every read that changed the offers (and once now if loaded)."""
        self._listeners.append(listener)
        if self.loaded:
            listener(self)

    # --- refreshing --------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the offers (or, without a manager, the service's operators) again."""
        if self.manager is None:
            members = self.chain.tangle.functions.getServiceOperators(self.service_id)
            operators = await self.chain.call(members)
            fresh: dict[str, Offer | None] = {to_checksum_address(op): None for op in operators}
        else:
            views: list[OperatorOfferView] = await service_offers(self.chain, self.manager, self.service_id)
            fresh = {to_checksum_address(v.operator): v.offer for v in views}
        changed = fresh != self.offers or not self.loaded
        self.offers = fresh
        self.loaded = True
        if changed:
            self.version += 1
            log.info("offers.loaded", service_id=self.service_id, manager=self.manager,
                     operators={op: sorted(m) for op, m in self.models_by_operator().items()})
            for listener in self._listeners:
                try:
                    listener(self)
                except Exception:  # a listener's bug must not stop the book
                    log.exception("offers.listener_failed")

    async def start(self) -> None:
        """Read the book now, then follow the manager's events in the background."""
        self._next_block = int(await self.chain.w3.eth.block_number) + 1
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="offer-book")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        refreshed_at = loop.time()
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                due = loop.time() - refreshed_at >= self.refresh_s
                if await self._events_since() or due:
                    await self.refresh()
                    refreshed_at = loop.time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the node hiccuped: keep the last good book, try again
                log.warning("offers.refresh_failed", error=str(exc) or type(exc).__name__)

    async def _events_since(self) -> bool:
        """Whether the manager emitted an offer or membership event since the last poll."""
        if self.manager is None or self._next_block is None:
            return False
        head = int(await self.chain.w3.eth.block_number)
        if head < self._next_block:
            return False
        logs = await self.chain.w3.eth.get_logs({
            "address": self.manager, "fromBlock": self._next_block, "toBlock": head,
            "topics": [self._topics],
        })
        self._next_block = head + 1
        relevant = [entry for entry in logs if _concerns(entry, self.service_id)]
        return bool(relevant)


_JOIN_LEAVE = frozenset(_event_topics(("OperatorJoined", "OperatorLeft")))


def _concerns(entry: Mapping[str, Any], service_id: int) -> bool:
    """Offer events concern every service; join/leave events only their own."""
    topics = [("0x" + bytes(t).hex()) if not isinstance(t, str) else t for t in entry.get("topics", [])]
    if topics and topics[0] in _JOIN_LEAVE:
        return len(topics) > 1 and topics[1].lower() == uint_topic(service_id).lower()
    return True
