"""The daemon's own metrics: the job pipeline, and the chain layer's figures an operator alerts on.

* :class:`JobMetrics`: counters and histograms updated by the daemon as jobs go through it. Kept
  in a private ``CollectorRegistry`` per context (not the process-global one), so that tests and
  the benchmark can build several contexts in one process.
* :class:`ChainMetrics`: a custom collector over the objects that already count (the producer's
  ``stats``, the transaction manager's counters), read when Prometheus scrapes, so nothing is
  counted twice. The two figures that cost I/O (jobs per ledger state, a ``COUNT`` over the
  ledger; and the chain head, an RPC) are never read at scrape time, which runs on the event
  loop: a task refreshes them every ``refresh_interval_s`` and the scrape reads that snapshot.

``run_daemon`` registers both in the HTTP API's registry, so ``GET /metrics`` serves them next
to the HTTP metrics (README, "Metrics").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from blueprint.periodic import Periodic

if TYPE_CHECKING:
    from web3 import AsyncWeb3

    from blueprint.tangle.ledger import Ledger
    from blueprint.tangle.producer import Producer
    from blueprint.tangle.txmanager import TxManager

log = structlog.get_logger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class JobMetrics:
    """Counters and histograms of the job pipeline (names prefixed ``blueprint_job``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.jobs_seen = Counter("blueprint_jobs_seen", "Jobs read from the chain.", ["job_index"],
                                 registry=self.registry)
        self.jobs_answered = Counter(
            "blueprint_jobs_answered", "Jobs answered, by outcome (ok or the error code).",
            ["job_index", "outcome"], registry=self.registry,
        )
        self.jobs_submitted = Counter("blueprint_jobs_submitted", "Results sent to the chain.",
                                      registry=self.registry)
        self.jobs_failed = Counter("blueprint_jobs_failed", "Jobs whose result could not be submitted.",
                                   registry=self.registry)
        self.in_flight = Gauge("blueprint_jobs_in_flight", "Jobs being computed now.", registry=self.registry)
        self.handler_seconds = Histogram(
            "blueprint_job_handler_seconds", "Time in the handler (inference included).", ["job_index"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.assignment = Counter(
            "blueprint_jobs_assignment",
            "Jobs by what the multi-operator rule made of them: computed (ours first), standby "
            "(another is responsible), taken_over, answered_by_another, skipped (not ours to "
            "answer), left (deadline passed: left to the next operator), retried (transient failure).",
            ["outcome"], registry=self.registry,
        )
        self.overhead_seconds = Histogram(
            "blueprint_job_overhead_seconds",
            "Daemon time from job seen to result sent, minus the handler time.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )


#: Longest one snapshot refresh may take before it counts as failed.
_REFRESH_TIMEOUT_S = 30.0

#: Help texts of the ``ProducerStats`` counters, each exported as ``blueprint_producer_<field>_total``
#: (every int field is exported, so a counter added there shows up without a change here).
PRODUCER_COUNTERS: dict[str, str] = {
    "scans": "eth_getLogs scan passes started.",
    "scan_errors": "Scan passes that failed (RPC errors, timeouts); the scanner backs off and retries.",
    "reorgs": "Reorgs detected (the cursor's block left the chain).",
    "orphaned": "Jobs orphaned by a reorg (their log left the chain; never answered).",
    "decode_errors": "Job logs that could not be decoded.",
    "delivered": "New jobs handed to the daemon.",
    "ws_connects": "WebSocket (re)connections.",
    "ws_logs": "Logs pushed by the WebSocket subscription.",
    "answers_lost": "Confirmed answers a reorg removed (their jobs are answered again).",
}

#: ``TxManager`` attribute -> (counter name without ``_total``, help).
TX_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("txs_sent", "blueprint_tx_sent", "Transactions broadcast (results and heartbeats)."),
    ("txs_bumped", "blueprint_tx_bumped", "Stuck transactions re-sent with higher fees (same nonce)."),
    ("txs_reverted", "blueprint_tx_reverted", "Transactions mined with a revert."),
    ("nonce_resyncs", "blueprint_tx_nonce_resyncs",
     "Next-nonce reads from the node: one at start, then one after each nonce error or failed send."),
)


class ChainMetrics(Collector):
    """The chain layer's figures, collected at scrape time from the parts that keep them.

    Args:
        ledger: the job ledger; its jobs per state are counted by the refresh task, never by a
            scrape (a ``COUNT`` runs on the ledger's thread and grows with the ledger).
        producer: its ``stats`` counters, ``ws_connected`` and ``pending()``; its ``stream``
            names the cursor read from the ledger.
        txm: the transaction manager's counters.
        w3: where the chain head is read by the refresh task (None: no head, no lag).
        refresh_interval_s: period of the ledger and head snapshot.
    """

    def __init__(self, ledger: Ledger, *, producer: Producer | None = None, txm: TxManager | None = None,
                 w3: AsyncWeb3 | None = None, refresh_interval_s: float = 5.0) -> None:
        self.ledger = ledger
        self.producer = producer
        self.txm = txm
        self.w3 = w3
        self.refresh_interval_s = refresh_interval_s
        self.refresh_errors = 0
        self._counts: dict[str, int] | None = None
        self._cursor_block: int | None = None
        self._head_block: int | None = None
        self._refreshed_at: float | None = None
        self._periodic = Periodic("chain-metrics", self.refresh, refresh_interval_s,
                                  on_error=self._refresh_failed, timeout_s=_REFRESH_TIMEOUT_S)

    # --- the snapshot ----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the jobs per state, the durable cursor and the head once (raises on failure;
        what was read before stays)."""
        counts = await self.ledger.counts()
        self._counts = {str(state): int(n) for state, n in counts.items()}
        if self.producer is not None:
            cursor = await self.ledger.get_cursor(self.producer.stream)
            self._cursor_block = cursor.block_number if cursor is not None else None
        if self.w3 is not None:
            self._head_block = int(await self.w3.eth.block_number)
        self._refreshed_at = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        """The last refresh: jobs per state, cursor and head blocks (None until the first)."""
        return {"ledger": dict(self._counts or {}), "cursor_block": self._cursor_block,
                "head_block": self._head_block}

    async def start(self) -> None:
        """Refresh now and then every ``refresh_interval_s`` until :meth:`stop` (a refresh that
        hangs past its bound or fails keeps the old snapshot)."""
        self._periodic.start()

    async def stop(self) -> None:
        """Stop refreshing (idempotent); the last snapshot stays readable."""
        await self._periodic.stop()

    def _refresh_failed(self, exc: Exception) -> None:  # the RPC or the ledger hiccuped
        self.refresh_errors += 1
        log.warning("metrics.refresh_failed", error=str(exc) or type(exc).__name__)

    # --- the collector -----------------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The families without samples (the registry checks names with this, no I/O)."""
        return self._families(samples=False)

    def collect(self) -> Iterator[Metric]:
        """Every family with its current value; only attribute reads (runs on the event loop)."""
        return self._families(samples=True)

    def _families(self, *, samples: bool) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("blueprint_ledger_jobs", "Jobs in the ledger by state (refreshed snapshot).",
                                 labels=["state"])
        if samples and self._counts is not None:
            for state, n in sorted(self._counts.items()):
                jobs.add_metric([state], n)
        yield jobs
        age = GaugeMetricFamily("blueprint_chain_snapshot_age_seconds",
                                "Age of the ledger counts, cursor and head snapshot.")
        if samples and self._refreshed_at is not None:
            age.add_metric([], time.monotonic() - self._refreshed_at)
        yield age
        errors = CounterMetricFamily("blueprint_chain_snapshot_errors",
                                     "Snapshot refreshes that failed (the previous values stay).")
        if samples:
            errors.add_metric([], self.refresh_errors)
        yield errors
        if self.w3 is not None:
            head = GaugeMetricFamily("blueprint_chain_head_block", "The chain's latest block number.")
            if samples and self._head_block is not None:
                head.add_metric([], self._head_block)
            yield head
        if self.producer is not None:
            yield from self._producer_families(self.producer, samples)
        if self.txm is not None:
            for attr, name, doc in TX_COUNTERS:
                family = CounterMetricFamily(name, doc)
                if samples:
                    family.add_metric([], getattr(self.txm, attr))
                yield family

    def _producer_families(self, producer: Producer, samples: bool) -> Iterator[Metric]:
        for field in dataclasses.fields(producer.stats):
            value = getattr(producer.stats, field.name)
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            family = CounterMetricFamily(f"blueprint_producer_{field.name}",
                                         PRODUCER_COUNTERS.get(field.name, f"Producer counter {field.name}."))
            if samples:
                family.add_metric([], value)
            yield family
        cursor = GaugeMetricFamily("blueprint_producer_cursor_block",
                                   "Last block scanned into the ledger (the durable cursor).")
        if samples and self._cursor_block is not None:
            cursor.add_metric([], self._cursor_block)
        yield cursor
        if self.w3 is not None:
            lag = GaugeMetricFamily("blueprint_producer_head_lag_blocks",
                                    "Chain head minus the cursor (includes [jobs] confirmations).")
            if samples and self._cursor_block is not None and self._head_block is not None:
                lag.add_metric([], max(0, self._head_block - self._cursor_block))
            yield lag
        pending = GaugeMetricFamily("blueprint_producer_pending_jobs",
                                    "Jobs delivered by the producer, not yet taken by the daemon.")
        if samples:
            pending.add_metric([], producer.pending())
        yield pending
        if producer.ws_url:  # only with a socket configured, so polling-only nodes never alert on it
            connected = GaugeMetricFamily("blueprint_producer_ws_connected",
                                          "1 while the WebSocket log subscription is up.")
            if samples:
                connected.add_metric([], float(producer.ws_connected))
            yield connected
