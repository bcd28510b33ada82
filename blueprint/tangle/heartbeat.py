"""Heartbeats to TNT Core's ``OperatorStatusRegistry``, so the operator is not reported offline.

What the deployed registry checks (tnt-core ``src/staking/OperatorStatusRegistry.sol``, the
version behind ``shared/tnt-core/abi/OperatorStatusRegistry.json``):

- only an operator of the service may beat (Tangle registers the service's operators there when
  the service activates; others get ``NotRegisteredOperator()``);
- ``submitHeartbeat(serviceId, blueprintId, statusCode, metrics, timestamp, signature)`` carries an
  EIP-712 signature by ``msg.sender`` over :data:`HEARTBEAT_TYPE` (operator, service, blueprint,
  status, ``keccak256(metrics)``, timestamp) in the domain
  ``("OperatorStatusRegistry", "1", chainId, registry)``; ``timestamp`` may not lie in the
  future of the including block nor be older than ``HEARTBEAT_MAX_AGE`` (5 min);
- ``submitHeartbeatDirect(serviceId, blueprintId, statusCode, metrics)`` is the same without the
  signature (``msg.sender`` already proves who beats);
- status 0 is Healthy, 1..99 Degraded, >= 100 starts slashing checks: we never send >= 100;
- ``metrics`` is ``abi.encode((string name, uint256 value)[])`` (``decodeMetricPairs``); the
  registry stores the values only where the service owner enabled custom metrics, and always
  stores ``keccak256(metrics)`` as ``lastMetricsHash``;
- an operator is offline once ``(now - lastHeartbeat) / interval >= maxMissed`` (per-service
  ``getHeartbeatConfig``; the defaults are 5 minutes and 3 missed beats).

Heartbeats are sent from the operator's key, which also submits job results, so they go through
the same :class:`~blueprint.tangle.txmanager.TxManager`: one lock-protected local nonce sequence,
never a second sender that could reuse or skip a result's nonce.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import AsyncWeb3

from blueprint.tangle import abi

if TYPE_CHECKING:
    from blueprint.tangle.chain import ChainClient
    from blueprint.tangle.txmanager import Receipt, TxManager

log = structlog.get_logger(__name__)

DOMAIN_NAME = "OperatorStatusRegistry"
DOMAIN_VERSION = "1"
DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
HEARTBEAT_TYPE = ("Heartbeat(address operator,uint64 serviceId,uint64 blueprintId,uint8 statusCode,"
                  "bytes32 metricsHash,uint64 timestamp)")
HEARTBEAT_TYPEHASH = keccak(text=HEARTBEAT_TYPE)
#: The registry's defaults when a service configured nothing.
DEFAULT_INTERVAL_S = 300
DEFAULT_MAX_MISSED = 3
#: The registry refuses signed heartbeats older than this (seconds).
HEARTBEAT_MAX_AGE_S = 300

STATUS_HEALTHY = 0
STATUS_DEGRADED = 1  # some nodes unhealthy or draining
STATUS_NO_NODE = 2  # no node can serve (still < 100: never a slashing report)

#: Gas for one heartbeat (the registry's work is ~100k with metrics; generous, like results).
HEARTBEAT_GAS = 600_000


@dataclass(frozen=True, slots=True)
class HealthSummary:
    """A compact picture of the operator's LLM nodes, sent as the heartbeat's metrics."""

    nodes: int
    healthy_nodes: int
    in_flight: int
    queued: int
    tokens_per_second: float

    @property
    def status_code(self) -> int:
        if self.nodes and self.healthy_nodes == self.nodes:
            return STATUS_HEALTHY
        return STATUS_DEGRADED if self.healthy_nodes else STATUS_NO_NODE

    def metric_pairs(self) -> list[tuple[str, int]]:
        """``MetricPair``s: integers only, so tokens/s is sent in thousandths."""
        return [
            ("nodes", self.nodes),
            ("healthy_nodes", self.healthy_nodes),
            ("in_flight", self.in_flight),
            ("queued", self.queued),
            ("tokens_per_second_milli", max(0, round(self.tokens_per_second * 1000))),
        ]


def encode_metrics(pairs: Iterable[tuple[str, int]]) -> bytes:
    """``abi.encode(MetricPair[])``, what the registry's ``decodeMetricPairs`` reads."""
    return abi_encode(["(string,uint256)[]"], [[(name, int(value)) for name, value in pairs]])


class NodeLoad(Protocol):
    """A node's load figures (:class:`blueprint.llm.client.NodeMetrics` has them)."""

    @property
    def in_flight(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def tokens_per_second(self) -> float: ...


class HealthNode(Protocol):
    """One LLM node as the heartbeat sees it (:class:`blueprint.balancer.node.NodeState`)."""

    def selectable(self) -> bool: ...
    def metrics(self) -> NodeLoad: ...


class NodeSource(Protocol):
    """Whatever holds the operator's nodes (:class:`blueprint.balancer.Balancer`)."""

    def nodes(self) -> Sequence[HealthNode]: ...


class HeartbeatSettings(Protocol):
    """What the daemon's heartbeat needs of the settings (:class:`blueprint.config.Settings`)."""

    @property
    def blueprint_id(self) -> int | None: ...
    @property
    def service_id(self) -> int | None: ...
    @property
    def status_registry_contract(self) -> str: ...


def summarize_balancer(balancer: NodeSource) -> HealthSummary:
    """Health of the balancer's nodes: usable (not draining, breaker not open), load, speed."""
    nodes = list(balancer.nodes())
    healthy = in_flight = queued = 0
    tps = 0.0
    for node in nodes:
        if node.selectable():
            healthy += 1
        try:
            snapshot = node.metrics()
        except Exception:  # a broken node must not stop the heartbeat
            continue
        in_flight += int(snapshot.in_flight)
        queued += int(snapshot.queued)
        tps += float(snapshot.tokens_per_second or 0.0)
    return HealthSummary(len(nodes), healthy, in_flight, queued, tps)


def heartbeat_domain_separator(chain_id: int, registry: str) -> bytes:
    return keccak(abi_encode(
        ["bytes32", "bytes32", "bytes32", "uint256", "address"],
        [DOMAIN_TYPEHASH, keccak(text=DOMAIN_NAME), keccak(text=DOMAIN_VERSION), chain_id,
         to_checksum_address(registry)],
    ))


def heartbeat_digest(*, operator: str, service_id: int, blueprint_id: int, status_code: int,
                     metrics: bytes, timestamp: int, chain_id: int, registry: str) -> bytes:
    """``keccak256("\\x19\\x01" || domainSeparator || hashStruct(Heartbeat))``."""
    struct_hash = keccak(abi_encode(
        ["bytes32", "address", "uint64", "uint64", "uint8", "bytes32", "uint64"],
        [HEARTBEAT_TYPEHASH, to_checksum_address(operator), service_id, blueprint_id, status_code,
         keccak(metrics), timestamp],
    ))
    return keccak(b"\x19\x01" + heartbeat_domain_separator(chain_id, registry) + struct_hash)


def sign_heartbeat(account: LocalAccount, *, service_id: int, blueprint_id: int, status_code: int,
                   metrics: bytes, timestamp: int, chain_id: int, registry: str) -> bytes:
    """The operator's 65-byte signature (r || s || v) of one heartbeat."""
    digest = heartbeat_digest(operator=account.address, service_id=service_id, blueprint_id=blueprint_id,
                              status_code=status_code, metrics=metrics, timestamp=timestamp,
                              chain_id=chain_id, registry=registry)
    return bytes(account.unsafe_sign_hash(digest).signature)


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    """``getHeartbeatConfig``; zeros (nothing configured) mean the registry's defaults."""

    interval_s: int
    max_missed: int
    custom_metrics: bool

    @classmethod
    def from_raw(cls, raw: Any) -> HeartbeatConfig:
        interval, max_missed, custom = raw
        return cls(int(interval) or DEFAULT_INTERVAL_S, int(max_missed) or DEFAULT_MAX_MISSED, bool(custom))


class HeartbeatTask:
    """Beats for one service from the operator's key, at the service's interval.

    Args:
        txm: the operator key's transaction manager (shared with result submission).
        w3: the chain (reads the config, the chain id and the block time).
        registry: the OperatorStatusRegistry address (``Settings.status_registry_contract``).
        service_id, blueprint_id: what the heartbeat is for.
        health: returns the current :class:`HealthSummary` (e.g. ``summarize_balancer``).
        signed: ``submitHeartbeat`` with an EIP-712 signature (default) or ``submitHeartbeatDirect``.
        interval_s: override the service's interval (tests); None reads it from the registry.
        safety: beat every ``interval * safety`` so that delays never add up to a missed beat.
        config_refresh_s: how often the service's config is read again.
        clock: wall clock (seconds), replaceable in tests.
    """

    def __init__(
        self,
        txm: TxManager,
        w3: AsyncWeb3,
        registry: str,
        *,
        service_id: int,
        blueprint_id: int,
        health: Callable[[], HealthSummary],
        signed: bool = True,
        interval_s: float | None = None,
        safety: float = 0.5,
        config_refresh_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < safety <= 1:
            raise ValueError("safety must lie in (0, 1]")
        self.txm = txm
        self.w3 = w3
        self.registry = w3.eth.contract(address=to_checksum_address(registry), abi=abi.STATUS_REGISTRY_ABI)
        self.service_id = service_id
        self.blueprint_id = blueprint_id
        self.health = health
        self.signed = signed
        self.interval_override = interval_s
        self.safety = safety
        self.config_refresh_s = config_refresh_s
        self.clock = clock
        self.config: HeartbeatConfig | None = None
        self._config_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.beats_sent = 0
        self.failures = 0
        self.last_receipt: Receipt | None = None

    # --- one heartbeat ------------------------------------------------------------------------

    async def read_config(self) -> HeartbeatConfig:
        raw = await self.registry.functions.getHeartbeatConfig(self.service_id).call()
        self.config = HeartbeatConfig.from_raw(raw)
        self._config_at = time.monotonic()
        return self.config

    async def period_s(self) -> float:
        """Seconds between beats: the service's interval times ``safety`` (or the override)."""
        if self.interval_override is not None:
            return self.interval_override
        if self.config is None or time.monotonic() - self._config_at > self.config_refresh_s:
            await self.read_config()
        assert self.config is not None
        return max(1.0, self.config.interval_s * self.safety)

    async def _timestamp(self) -> int:
        """A signing time the registry accepts: never after the including block (the latest
        block's time is a lower bound of it), and recent even when the chain was idle (wall
        clock minus a small allowance for a chain clock that lags ours)."""
        latest = int((await self.w3.eth.get_block("latest"))["timestamp"])
        return max(latest, int(self.clock()) - 15)

    async def calldata(self, summary: HealthSummary) -> bytes:
        """The encoded ``submitHeartbeat``/``submitHeartbeatDirect`` call for ``summary``."""
        metrics = encode_metrics(summary.metric_pairs())
        status = summary.status_code
        fns = self.registry.functions
        if not self.signed:
            fn = fns.submitHeartbeatDirect(self.service_id, self.blueprint_id, status, metrics)
        else:
            if self.txm.chain_id is None:
                self.txm.chain_id = await self.w3.eth.chain_id
            timestamp = await self._timestamp()
            signature = sign_heartbeat(self.txm.account, service_id=self.service_id,
                                       blueprint_id=self.blueprint_id, status_code=status, metrics=metrics,
                                       timestamp=timestamp, chain_id=self.txm.chain_id,
                                       registry=self.registry.address)
            fn = fns.submitHeartbeat(self.service_id, self.blueprint_id, status, metrics, timestamp,
                                     signature)
        return bytes.fromhex(fn._encode_transaction_data().removeprefix("0x"))

    async def beat(self, *, wait_s: float | None = None) -> Receipt:
        """Send one heartbeat now and wait for it to be mined (TxRevertedError on a revert)."""
        summary = self.health()
        data = await self.calldata(summary)
        receipt = await self.txm.send_and_wait(self.registry.address, data, gas=HEARTBEAT_GAS, limit=wait_s,
                                               what="heartbeat")
        self.beats_sent += 1
        self.last_receipt = receipt
        log.info("heartbeat.sent", service_id=self.service_id, status=summary.status_code,
                 healthy_nodes=summary.healthy_nodes, nodes=summary.nodes, tx_hash=receipt.tx_hash)
        return receipt

    # --- the loop -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Beat once now (a failure is logged, not raised), then every period until :meth:`stop`."""
        if self._task is not None:
            return
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Stop beating; a heartbeat being sent gets ``timeout`` seconds to finish."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            pass

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                period = await self.period_s()
                await self.beat(wait_s=max(10.0, period))
                delay = period
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep beating: the next one may get through
                self.failures += 1
                delay = min(backoff, 60.0)
                backoff *= 2
                log.warning("heartbeat.failed", service_id=self.service_id, error=str(exc),
                            retry_in_s=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)


async def heartbeat_for_daemon(settings: HeartbeatSettings, chain: ChainClient, txm: TxManager,
                               nodes: NodeSource) -> HeartbeatTask:
    """The daemon's heartbeat: the operator's transaction manager, the registry of the settings,
    the service's blueprint (``BLUEPRINT_ID``, else read from the service), the nodes' health."""
    service_id = settings.service_id
    if service_id is None:
        raise ValueError("a heartbeat needs settings.service_id")
    blueprint_id = settings.blueprint_id
    if blueprint_id is None:
        service = await chain.call(chain.tangle.functions.getService(service_id))
        blueprint_id = int(service[0])
    return HeartbeatTask(txm, chain.w3, settings.status_registry_contract,
                         service_id=service_id, blueprint_id=blueprint_id,
                         health=lambda: summarize_balancer(nodes))
