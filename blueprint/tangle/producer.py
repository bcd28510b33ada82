"""The producer: a durable, reorg-aware stream of the service's job calls.

Why so much care: a job's inputs exist only in its ``JobSubmitted`` log, so a missed log is a lost
job and a log from an orphaned block is a job that never happened. The producer:

* scans ``eth_getLogs`` (chunked) from the durable cursor in the ledger up to ``head -
  confirmations``, on start, after every gap, on every new head and every ``poll_interval``;
* when ``ws_url`` is set, subscribes to ``newHeads`` (wakes the scan at once) and to the job logs
  (with ``confirmations == 0`` a pushed log is delivered without waiting for the scan);
  ``removed: true`` logs orphan their job; a dropped socket is reconnected with backoff and the
  scan backfills whatever the gap hid;
* detects reorgs by block hash: the cursor's block must still be canonical; when it is not, it
  walks back the remembered hashes to the common ancestor, keeps the jobs the new chain holds
  again, orphans the rest, rewinds the cursor and re-scans;
* records jobs and the cursor in one ledger transaction and delivers a job only when the ledger
  says it is new: each (service, call id) once, across restarts and re-deliveries;
* watches our own answers: once the cursor passes an answer's block, that block's hash must match
  the receipt's; an answer a reorg removed re-opens its job (see ``_watch_answers``).

Use::

    producer = Producer(ledger, w3, tangle_address=..., service_id=..., ws_url=...)
    await producer.start()
    async for job in producer:   # JobCall, each once
        ...
    await producer.stop()
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from web3 import AsyncWeb3

from blueprint.errors import BlueprintError
from blueprint.tangle.events import (
    JOB_TOPICS,
    LogDecodeError,
    RawLog,
    decode_job_log,
    normalize_log,
    uint_topic,
)
from blueprint.tangle.ledger import Cursor, JobRecord, Ledger
from blueprint.tangle.rpc import NodeSubscriptions, raw_request
from blueprint.tangle.txmanager import fetch_receipt
from blueprint.tangle.types import JobCall

log = structlog.get_logger(__name__)

_RANGE_ERRORS = ("range", "too many", "limit", "exceed", "block range", "response size")


class ChainMovedError(BlueprintError):
    """A reorg happened in the middle of a scan (logs and headers disagree): scan again."""

    code = "chain_moved"
    retryable = True


@dataclass
class ProducerStats:
    """Counters for metrics and tests."""

    delivered: int = 0
    decode_errors: int = 0
    reorgs: int = 0
    orphaned: int = 0
    scans: int = 0
    scan_errors: int = 0
    ws_connects: int = 0
    ws_logs: int = 0
    answers_lost: int = 0


class Producer:
    """Follows ``JobSubmitted``/``JobSubmittedFromQuote`` of one service.

    Args:
        ledger: the durable ledger (cursor + jobs).
        w3: ``AsyncWeb3`` over HTTP: scans, block headers.
        tangle_address: the TNT Core contract.
        service_id: the service whose jobs we answer (topic 1 filter).
        ws_url: WebSocket RPC for push (None: polling only).
        confirmations: deliver a log only once its block is this many blocks deep (0: at once).
        poll_interval: seconds between scans when nothing wakes the scanner.
        chunk_size: most blocks per ``eth_getLogs`` (halved automatically when the node objects).
        start_block: first block to scan when the ledger has no cursor yet.
        max_backoff: ceiling of the reconnect / retry delay, seconds.
        max_reorg_depth: when no remembered block hash is canonical any more, rescan this many
            blocks below the cursor (safe: a deeper rescan only costs time).
        scan_timeout: seconds one scan pass may take before it is abandoned and retried.
        ws_scan_gap: with the socket up and ``confirmations == 0``, the least time between two
            scans (heads arriving faster are coalesced; the socket delivers the logs).
    """

    def __init__(
        self,
        ledger: Ledger,
        w3: AsyncWeb3,
        *,
        tangle_address: str,
        service_id: int,
        ws_url: str | None = None,
        confirmations: int = 0,
        poll_interval: float = 1.0,
        chunk_size: int = 2000,
        start_block: int = 0,
        max_backoff: float = 10.0,
        max_reorg_depth: int = 256,
        scan_timeout: float = 60.0,
        ws_scan_gap: float = 0.25,
    ) -> None:
        if confirmations < 0:
            raise ValueError("confirmations must be >= 0")
        self.ledger = ledger
        self.w3 = w3
        self.tangle = AsyncWeb3.to_checksum_address(tangle_address)
        self.service_id = service_id
        self.ws_url = ws_url
        self.confirmations = confirmations
        self.poll_interval = poll_interval
        self.chunk_size = max(1, chunk_size)
        self.start_block = max(0, start_block)
        self.max_backoff = max_backoff
        self.max_reorg_depth = max(1, max_reorg_depth)
        self.scan_timeout = scan_timeout
        self.ws_scan_gap = ws_scan_gap
        self.stream = f"jobs:{self.tangle.lower()}:{service_id}"
        self.stats = ProducerStats()
        self.ws_connected = False
        self._topics: list[Any] = [list(JOB_TOPICS), uint_topic(service_id)]
        self._out: asyncio.Queue[JobCall] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._log = log.bind(service_id=service_id)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start scanning (and the WebSocket, if configured). Returns at once."""
        if self._tasks:
            return
        self._stopping = False
        self._tasks.append(asyncio.create_task(self._scan_loop(), name="producer-scan"))
        if self.ws_url:
            self._tasks.append(asyncio.create_task(self._ws_loop(), name="producer-ws"))

    async def stop(self) -> None:
        """Stop intake. Jobs already delivered are the daemon's; the cursor is durable."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __aiter__(self) -> AsyncIterator[JobCall]:
        return self

    async def __anext__(self) -> JobCall:
        return await self._out.get()

    async def get(self) -> JobCall:
        """The next job (waits; wrap in ``asyncio.timeout`` to bound it)."""
        return await self._out.get()

    def pending(self) -> int:
        """Jobs delivered by the scanner but not yet taken by the daemon."""
        return self._out.qsize()

    def wake(self) -> None:
        """Scan now (e.g. after the daemon learns of a new block some other way)."""
        self._wake.set()

    async def _deliver(self, jobs: Sequence[JobCall]) -> None:
        for job in jobs:
            self.stats.delivered += 1
            self._log.info("producer.job", call_id=job.call_id, job_index=job.job_index,
                           block=job.block_number, from_quote=job.from_quote)
            self._out.put_nowait(job)

    # --- scanning -----------------------------------------------------------------------------

    async def _scan_loop(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                async with asyncio.timeout(self.scan_timeout):
                    await self.scan_once()
                backoff = 0.2
                interval = self.poll_interval * (5 if self.ws_connected else 1)
                if self.ws_connected and self.confirmations == 0:
                    # pushed logs are delivered by the socket; the scan only guards against gaps
                    # and reorgs, so under a burst of heads it need not run on every one
                    await asyncio.sleep(self.ws_scan_gap)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the node is down or answered nonsense: back off, never die
                self.stats.scan_errors += 1
                self._log.warning("producer.scan_failed", error=str(exc) or type(exc).__name__,
                                  retry_in=backoff)
                interval = backoff
                backoff = min(backoff * 2, self.max_backoff)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _header(self, block: int | str) -> tuple[int, str]:
        """(number, hash) of a block, read raw: web3's formatting of a whole block (every field
        to HexBytes and AttributeDicts) was most of a scan's cost, for two fields."""
        tag = block if isinstance(block, str) else hex(block)
        header = await raw_request(self.w3, "eth_getBlockByNumber", [tag, False])
        if not isinstance(header, Mapping):
            raise ChainMovedError(f"the node does not know block {block} (any more): scanning again")
        return int(header["number"], 16), str(header["hash"]).lower()

    async def scan_once(self) -> int:
        """One pass: verify the cursor, then fetch and record logs up to ``head - confirmations``.

        Returns how many jobs were delivered. Raises on RPC errors (the loop backs off).
        """
        self.stats.scans += 1
        head_number, head_hash = await self._header("latest")
        target = head_number - self.confirmations
        cursor = await self.ledger.get_cursor(self.stream)
        if cursor is None and 0 < self.start_block <= head_number + 1:
            # anchor the very first scan on the block before it, so a reorg of the first
            # scanned blocks is detected like any other
            number, anchor = await self._header(self.start_block - 1)
            cursor = Cursor(number, anchor)
            await self.ledger.set_cursor(cursor, blocks=[(number, anchor)], stream=self.stream)
        if cursor is not None:
            if cursor.block_number > head_number:
                chain_hash = None  # the chain is shorter than our cursor: certainly a reorg
            elif cursor.block_number == head_number:
                chain_hash = head_hash
            else:
                chain_hash = (await self._header(cursor.block_number))[1]
            if chain_hash != cursor.block_hash:
                cursor = await self._handle_reorg(cursor, head_number)
        first = self.start_block if cursor is None else cursor.block_number + 1
        delivered = 0
        while first <= target:
            last = min(first + self.chunk_size - 1, target)
            logs = await self._get_logs(first, last)
            last = self._effective_last(first, last)  # a chunk halving shortens the range
            end_hash = head_hash if last == head_number else (await self._header(last))[1]
            jobs, blocks = self._decode(logs)
            if dict(blocks).get(last, end_hash) != end_hash:
                # the chain moved between eth_getLogs and the header: scan this range again
                raise ChainMovedError(f"logs of block {last} are from another fork; rescanning")
            blocks.append((last, end_hash))
            fresh = await self.ledger.record_seen(
                jobs, cursor=Cursor(last, end_hash), blocks=blocks,
                scanned=(self.service_id, first, last), stream=self.stream,
            )
            await self._deliver(fresh)
            delivered += len(fresh)
            first = last + 1
            cursor = Cursor(last, end_hash)
        if cursor is not None:
            await self._watch_answers(cursor)
        return delivered

    def _effective_last(self, first: int, last: int) -> int:
        return min(last, first + self.chunk_size - 1)

    async def _get_logs(self, first: int, last: int) -> list[Any]:
        """``eth_getLogs`` over [first, last]; halves ``chunk_size`` while the node refuses."""
        while True:
            last = min(last, first + self.chunk_size - 1)
            query = {"address": self.tangle, "fromBlock": hex(first), "toBlock": hex(last),
                     "topics": self._topics}
            try:  # raw: the logs are decoded from the node's hex anyway (events.normalize_log)
                logs = await raw_request(self.w3, "eth_getLogs", [query])
            except Exception as exc:
                text = str(exc).lower()
                if self.chunk_size > 1 and any(marker in text for marker in _RANGE_ERRORS):
                    self.chunk_size = max(1, self.chunk_size // 2)
                    self._log.info("producer.chunk_halved", chunk_size=self.chunk_size)
                    continue
                raise
            if not isinstance(logs, list):
                raise ChainMovedError(f"eth_getLogs answered {type(logs).__name__}, not a list")
            return logs

    def _decode(self, logs: Sequence[Mapping[str, Any]]) -> tuple[list[JobCall], list[tuple[int, str]]]:
        jobs: list[JobCall] = []
        blocks: dict[int, str] = {}
        for entry in logs:
            job = self._decode_one(entry)
            if job is not None and job.service_id == self.service_id:
                if blocks.setdefault(job.block_number, job.block_hash) != job.block_hash:
                    raise ChainMovedError(f"two hashes for block {job.block_number} in one answer")
                jobs.append(job)
        return jobs, list(blocks.items())

    def _decode_one(self, entry: Mapping[str, Any] | RawLog) -> JobCall | None:
        try:
            return decode_job_log(entry)
        except LogDecodeError as exc:
            self.stats.decode_errors += 1
            tx = entry.tx_hash if isinstance(entry, RawLog) else entry.get("transactionHash")
            tx_hex = "0x" + bytes(tx).hex() if isinstance(tx, (bytes, bytearray)) else tx
            self._log.error("producer.bad_log", error=exc.message, tx_hash=tx_hex)
            return None

    # --- reorgs -------------------------------------------------------------------------------

    async def _handle_reorg(self, cursor: Cursor, head_number: int) -> Cursor:
        """Find the common ancestor, keep the jobs the new chain holds again, orphan the rest."""
        self.stats.reorgs += 1
        ancestor: Cursor | None = None
        remembered = await self.ledger.block_hashes(min(cursor.block_number, head_number),
                                                    limit=self.max_reorg_depth)
        for number, stored_hash in remembered:
            if number == cursor.block_number and stored_hash == cursor.block_hash:
                continue  # that is the block we just found replaced
            if (await self._header(number))[1] == stored_hash:
                ancestor = Cursor(number, stored_hash)
                break
        if ancestor is None:
            # deeper than what we remember: rescan a generous window (idempotent, only slower)
            number = max(self.start_block - 1, cursor.block_number - self.max_reorg_depth, 0)
            number = min(number, head_number)
            ancestor = Cursor(number, (await self._header(number))[1])
            self._log.error("producer.deep_reorg", cursor=cursor.block_number, rescan_from=number + 1)
        # answers above the ancestor sat in replaced blocks: the answer watch checks them again
        await self.ledger.unanchor_answers_above(ancestor.block_number, self.service_id)
        keep: list[tuple[int, int]] = []
        first = ancestor.block_number + 1
        while first <= head_number:
            last = min(first + self.chunk_size - 1, head_number)
            jobs, _ = self._decode(await self._get_logs(first, last))
            keep += [(j.service_id, j.call_id) for j in jobs]
            first = self._effective_last(first, last) + 1
        orphaned = await self.ledger.rewind(ancestor, service_id=self.service_id, keep=keep,
                                            stream=self.stream)
        self.stats.orphaned += len(orphaned)
        self._log.warning("producer.reorg", old_cursor=cursor.block_number, ancestor=ancestor.block_number,
                          orphaned=[c for _, c in orphaned], kept=len(keep))
        return ancestor

    # --- our answers ----------------------------------------------------------------------------

    async def _watch_answers(self, covered: Cursor) -> None:
        """Check our confirmed answers in blocks the cursor now covers against the canonical chain.

        The cursor check proves the chain up to the cursor unchanged, but an answer lands in a
        block *after* its job's log, possibly beyond the cursor: a reorg there (which may even
        re-include the job's block unchanged) would go unseen. So each answer is compared once,
        when the cursor has passed its block, with the canonical hash of that block; from then on
        the cursor check covers it. An answer whose block was replaced is looked up again by its
        transaction: re-included elsewhere (and still successful), it is watched there; gone or now
        reverting, its job is re-opened and answered anew (the contract refuses a second result,
        so this can never answer twice).
        """
        pending = await self.ledger.unanchored_answers(covered.block_number, self.service_id)
        if not pending:
            return
        canonical: dict[int, str] = {covered.block_number: covered.block_hash}
        wanted = sorted({int(r.answer_block) for r in pending} - set(canonical))  # type: ignore[arg-type]
        for number, block_hash in await asyncio.gather(*(self._header(n) for n in wanted)):
            canonical[number] = block_hash
        anchored: list[tuple[int, int]] = []
        lost: list[JobRecord] = []
        for record in pending:
            number = int(record.answer_block)  # type: ignore[arg-type]
            if canonical[number] == record.answer_hash:
                anchored.append((record.service_id, record.call_id))
                continue
            receipt = await fetch_receipt(self.w3, record.submit_tx_hash) if record.submit_tx_hash else None
            if receipt is None or receipt.status != 1:
                # gone, or re-included where it reverts (e.g. now ordered before the job itself)
                lost.append(record)
            else:
                await self.ledger.move_answer(record.service_id, record.call_id, receipt.block_number,
                                              receipt.block_hash)
        if anchored:
            await self.ledger.anchor_answers(anchored)
        if lost:
            number = min(r.block_number for r in lost) - 1
            back = Cursor(number, (await self._header(number))[1])
            await self.ledger.reopen_lost_answers([(r.service_id, r.call_id) for r in lost], back,
                                                  stream=self.stream)
            self.stats.answers_lost += len(lost)
            self._log.warning("producer.answers_reorged_out", call_ids=[r.call_id for r in lost],
                              rescan_from=number + 1)
            self.wake()

    # --- WebSocket push -----------------------------------------------------------------------

    async def _ws_loop(self) -> None:
        backoff = 0.5
        while not self._stopping:
            try:
                async with NodeSubscriptions(self.ws_url) as node:
                    heads = await node.subscribe("newHeads")
                    logs = await node.subscribe("logs", {"address": self.tangle, "topics": self._topics})
                    self.ws_connected = True
                    self.stats.ws_connects += 1
                    backoff = 0.5
                    self._log.info("producer.ws_connected", url=self.ws_url)
                    self._wake.set()  # backfill whatever happened while we were away
                    async for sub, result in node.notifications():
                        if sub == heads:
                            self._wake.set()
                        elif sub == logs and isinstance(result, Mapping):
                            await self._on_ws_log(result)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning("producer.ws_down", error=str(exc) or type(exc).__name__, retry_in=backoff)
            finally:
                self.ws_connected = False
            if self._stopping:
                break
            self._wake.set()  # polling takes over at once
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff)

    async def _on_ws_log(self, entry: Mapping[str, Any]) -> None:
        self.stats.ws_logs += 1
        try:
            raw = normalize_log(entry)
        except LogDecodeError as exc:
            self.stats.decode_errors += 1
            self._log.error("producer.bad_log", error=exc.message)
            return
        if raw.removed:
            job = self._decode_one(raw)
            if job is not None and await self.ledger.orphan_if_in_block(job.service_id, job.call_id,
                                                                        job.block_hash):
                self.stats.orphaned += 1
                self._log.warning("producer.log_removed", call_id=job.call_id, block=job.block_number)
            self._wake.set()
            return
        if self.confirmations > 0:
            self._wake.set()  # the scan delivers it once it is deep enough
            return
        job = self._decode_one(raw)
        if job is None or job.service_id != self.service_id:
            return
        started = time.perf_counter()
        fresh = await self.ledger.record_seen([job], stream=self.stream)
        await self._deliver(fresh)
        if fresh:
            self._log.debug("producer.pushed", call_id=job.call_id,
                            record_ms=round((time.perf_counter() - started) * 1000, 2))
