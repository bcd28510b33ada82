"""The consumer: job results to ``submitResult`` / ``submitResults`` on TNT Core, tracked in the ledger.

Why batching: under a burst many answers are ready within a few milliseconds of each other, and
one ``submitResults`` transaction replaces many (one nonce, one receipt wait). Batching is
natural: whatever results accumulated while the previous transactions were being broadcast go
out together in the next one (up to ``max_batch``, bounded by gas), so a quiet node sends at once
and a busy one sends bigger transactions; ``batch_window`` (default 0) adds an optional fixed wait.
A batch that reverts (say one job was already answered) is split into single submissions, each
simulated first, so one bad job never blocks the others.

Why fresh results are not simulated: an ``eth_call`` costs the node a full execution of the
transaction, about as much as mining it, and under a burst it was most of the latency. A freshly
computed answer to a job just seen on chain is valid in all but rare cases, and when a batch does
revert on chain the receipt says so and the split above handles it (one reverted transaction's
gas is the price). After such a revert the consumer simulates everything for ``cautious_for``
seconds, so a lasting cause (an unregistered operator, say) does not burn gas batch after batch.
Resumed results (after a restart, possibly already answered) are always simulated first.
With simulation on (the daemon's default, ``[jobs] simulate_before_send``) a fresh batch is
simulated once, on ``latest``: none of our transactions can hold a result just computed, and a
node answers that call in about half the time of a ``pending`` one under a burst (anvil builds
the pending block for each). Resumed results and cautious periods simulate on ``pending``. A
fresh batch's answers are stored in the ledger (``answered``, one operation for the whole batch)
while the node simulates it, and the transaction goes out once both are done. A dispatch slot is
freed as soon as the node has the transaction; the ledger write (``submitted``, stamped with the
moment the node accepted it) and the receipt wait follow in their own task.

``ResultAlreadySubmitted`` and ``JobAlreadyCompleted`` mean the chain already has what we wanted:
the job is ``confirmed`` (with that note), not failed. Other reverts fail the job with the decoded
reason. Transport errors (the node is down) are retried with backoff for ``retry_for`` seconds;
the job stays ``answered`` in the ledger meanwhile, so a restart resumes it.

Ledger states written here: ``answered`` (result stored) -> ``submitted`` (tx hash) ->
``confirmed`` (receipt) or ``failed`` (reason).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from eth_abi import encode as abi_encode
from web3 import AsyncWeb3

from blueprint.tangle.abi import JOB_RESULT_SUBMITTED_TOPIC, TANGLE_ABI, fragment, selector
from blueprint.tangle.chain import OnchainJobCall
from blueprint.tangle.events import address_topic, decode_result_log, uint_topic
from blueprint.tangle.ledger import IllegalTransitionError, JobRecord, JobState, Ledger, LedgerError
from blueprint.tangle.txmanager import (
    Receipt,
    SentTx,
    TxError,
    TxManager,
    TxReplacedError,
    TxRevertedError,
)
from blueprint.tangle.types import JobCall, JobResult

log = structlog.get_logger(__name__)

#: Reverts that mean "the chain already has an answer from us / needs none": count as done.
DONE_ERRORS = frozenset({"ResultAlreadySubmitted", "JobAlreadyCompleted"})
_SUBMIT_RESULT = selector(fragment(TANGLE_ABI, "submitResult"))
_SUBMIT_RESULTS = selector(fragment(TANGLE_ABI, "submitResults"))
_GET_JOB_CALL = selector(fragment(TANGLE_ABI, "getJobCall"))

#: ``deferred``: the consumer was closed before this result went out (or before its receipt
#: came); the job stays ``answered``/``submitted`` in the ledger and :meth:`Consumer.resume`
#: finds it on the next start.
#: ``answered_by_another``: another operator's result completed the job; nothing of ours is sent.
Status = Literal["confirmed", "already_answered", "failed", "orphaned", "dry_run", "deferred",
                 "answered_by_another"]


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """What became of one result: the ledger holds the same, this is for the caller's logs/metrics."""

    service_id: int
    call_id: int
    status: Status
    tx_hash: str | None = None
    reason: str | None = None
    #: The daemon's own time on the job (seen to transaction sent, less the handler's time), from
    #: the ledger's stamps once the job is confirmed; None when it was not sent by us.
    overhead_s: float | None = None


def own_overhead_s(record: JobRecord) -> float | None:
    """Seen to transaction sent, less the handler's time (started to answered), or None when the
    record lacks a stamp."""
    if not (record.seen_at and record.submitted_at and record.answered_at):
        return None
    handler_s = record.answered_at - (record.started_at or record.seen_at)
    return max(0.0, record.submitted_at - record.seen_at - handler_s)


def encode_submit_result(service_id: int, call_id: int, output: bytes) -> bytes:
    return _SUBMIT_RESULT + abi_encode(["uint64", "uint64", "bytes"], [service_id, call_id, output])


def encode_submit_results(service_id: int, call_ids: list[int], outputs: list[bytes]) -> bytes:
    return _SUBMIT_RESULTS + abi_encode(["uint64", "uint64[]", "bytes[]"], [service_id, call_ids, outputs])


@dataclass
class Resumption:
    """What :meth:`Consumer.resume` found still owed: jobs to run again and answers to send again."""

    rerun: list[JobCall] = field(default_factory=list)
    resend: list[JobResult] = field(default_factory=list)


@dataclass
class _Item:
    result: JobResult
    future: asyncio.Future[SubmitOutcome]
    verify: bool = False  # simulate before the first send (resumed results may already be answered)
    #: the answer is stored in the ledger (``answered``); fresh ones are stored with their batch
    prepared: bool = False
    #: when the handler produced it (the ledger's ``answered_at``)
    answered_at: float = field(default_factory=time.time)


class Consumer:
    """Submits results through one :class:`TxManager`; use ``async with`` or start()/close().

    Args:
        ledger: the job ledger (every job submitted must be in it: the producer put it there).
        txm: the operator key's transaction manager.
        tangle_address: the TNT Core (Tangle proxy) contract.
        batch_window: extra seconds a ready result waits for others to share a transaction (0:
            natural batching only, see the module docstring).
        max_batch: most results in one ``submitResults``.
        gas_base / gas_per_result: gas limit = base + per_result x n (generous: the manager's
            result hook has a 500k stipend per result; a result costs ~160-200k without a hook).
        max_tx_gas: the most gas one transaction may ask for (stay under the block gas limit);
            it also bounds the batch size.
        retry_for: seconds to keep retrying transport errors before failing a job.
        max_dispatch: transactions prepared/broadcast concurrently (more overlap vs bigger batches;
            one is enough since a batch's ledger write overlaps its simulation: measured under a
            burst, one gave the same overhead as three with 40% fewer transactions).
        dry_run: compute and record answers but never send a transaction.
        presimulate: ``eth_call`` every batch before sending it (safer on gas, slower under load).
        cautious_for: seconds every batch is simulated after a batch reverted on chain.
    """

    def __init__(
        self,
        ledger: Ledger,
        txm: TxManager,
        tangle_address: str,
        *,
        batch_window: float = 0.0,
        max_batch: int = 32,
        gas_base: int = 1_500_000,
        gas_per_result: int = 800_000,
        max_tx_gas: int = 25_000_000,
        retry_for: float = 300.0,
        dry_run: bool = False,
        max_dispatch: int = 1,
        presimulate: bool = False,
        cautious_for: float = 60.0,
    ) -> None:
        self.ledger = ledger
        self.txm = txm
        self.w3: AsyncWeb3 = txm.w3
        self.tangle = AsyncWeb3.to_checksum_address(tangle_address)
        self.batch_window = batch_window
        self.max_batch = max(1, min(max_batch, (max_tx_gas - gas_base) // gas_per_result))
        self.gas_base = gas_base
        self.gas_per_result = gas_per_result
        self.retry_for = retry_for
        self.dry_run = dry_run
        self.presimulate = presimulate
        self.cautious_for = cautious_for
        self._cautious_until = 0.0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max(1, max_dispatch))
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Jobs :meth:`resume` handed out to be sent again: simulated before their first send.
        self._resumed: set[tuple[int, int]] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batching loop (``submit`` also starts it on first use)."""
        self._closed = False
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._batch_loop(), name="consumer-batcher")

    async def close(self, grace: float = 30.0) -> None:
        """Stop taking results; wait up to ``grace`` s for submissions in flight.

        Results not sent by then resolve as ``deferred`` (they stay in the ledger for resume).
        """
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        left: list[_Item] = []
        while not self._queue.empty():  # not yet sent: they stay `answered` for the next start
            left.append(self._queue.get_nowait())
        fresh = [item for item in left if not item.prepared]
        if fresh:
            try:
                await self.ledger.prepare_answers(_answers(fresh))
            except Exception:  # the jobs stay `running`: the next start runs them again
                log.exception("consumer.store_on_close_failed", size=len(fresh))
        _defer(left)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- public API ---------------------------------------------------------------------------

    async def submit(self, result: JobResult, *, verify: bool = False) -> SubmitOutcome:
        """Record the answer and send it; returns once it is confirmed, found done, or failed.

        The job must be in the ledger (else UnknownJobError): seen, running, answered or
        submitted. An orphaned job is not sent (its block left the chain). Resumed
        ``answered``/``submitted`` jobs are sent again; the chain's ``ResultAlreadySubmitted``
        keeps that single. ``verify`` simulates before the first send (for results that may
        already be on chain; always so for what :meth:`resume` handed out).
        """
        key = (result.service_id, result.call_id)
        if key in self._resumed:
            self._resumed.discard(key)
            verify = True
        prepared = self.dry_run or self._closed or verify
        if prepared:  # stored now; a fresh answer is stored with its batch, while it is simulated
            record = await self.ledger.prepare_answer(result.service_id, result.call_id, result.output)
            early = _early_outcome(result, record)
            if early is not None:
                return early
            if self.dry_run:
                return SubmitOutcome(result.service_id, result.call_id, "dry_run")
            if self._closed:
                return SubmitOutcome(result.service_id, result.call_id, "deferred", reason="consumer closed")
        if self._loop_task is None:
            await self.start()
        future: asyncio.Future[SubmitOutcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(result, future, verify, prepared))
        return await future

    async def is_answered_on_chain(self, service_id: int, call_id: int, operator: str | None = None,
                                   *, from_block: int = 0) -> bool:
        """Whether the chain needs no result from ``operator`` (default: our key) for this call.

        True when the job is completed, or when a ``JobResultSubmitted`` from the operator exists
        (searched from ``from_block``, e.g. the job's block from the ledger). A call the contract
        does not know (reverts) is not answered.
        """
        operator = operator or self.txm.address
        data = _GET_JOB_CALL + abi_encode(["uint64", "uint64"], [service_id, call_id])
        try:
            job = OnchainJobCall.decode(await self.txm.simulate(self.tangle, data))
        except TxRevertedError:
            return False
        if job.completed:
            return True
        if job.result_count == 0:
            return False
        return await self.our_answer(service_id, call_id, operator, from_block=from_block) is not None

    async def our_answer(self, service_id: int, call_id: int, operator: str | None = None,
                         *, from_block: int = 0) -> tuple[str, int, str] | None:
        """Where ``operator``'s (default: our key's) ``JobResultSubmitted`` for this call is:
        (transaction hash, block number, block hash) of the latest one, or None.

        A result the chain already holds from us (sent before a crash, or by an earlier attempt)
        is confirmed with this location, so the producer's answer watch follows it like any other.
        """
        operator = (operator or self.txm.address).lower()
        logs = await self.w3.eth.get_logs({
            "address": self.tangle,
            "fromBlock": from_block,
            "toBlock": "latest",
            "topics": [JOB_RESULT_SUBMITTED_TOPIC, uint_topic(service_id), uint_topic(call_id),
                       address_topic(operator)],
        })
        ours = [entry for entry in logs if decode_result_log(entry).operator.lower() == operator]
        if not ours:
            return None
        last = ours[-1]
        return ("0x" + bytes(last["transactionHash"]).hex(), int(last["blockNumber"]),
                "0x" + bytes(last["blockHash"]).hex())

    async def confirm_already_answered(self, keys: list[tuple[int, int]], note: str) -> None:
        """Confirm jobs the chain says are answered, recording where our answer is when we find it.

        ``JobAlreadyCompleted`` with no result of ours means another operator answered: the job
        is ``answered_by_another``, not ours to watch.
        """
        for sid, cid in keys:
            record = await self.ledger.get(sid, cid)
            try:
                found = await self.our_answer(sid, cid, from_block=record.block_number if record else 0)
            except Exception as exc:  # the node hiccuped: it is answered all the same, just unwatched
                log.warning("consumer.answer_lookup_failed", service_id=sid, call_id=cid,
                            error=str(exc) or type(exc).__name__)
                await self._each([(sid, cid)], JobState.CONFIRMED, reason=note)
                continue
            if found is None and note != "ResultAlreadySubmitted":
                await self._each([(sid, cid)], JobState.ANSWERED_BY_ANOTHER, reason=note)
            elif found is None:
                await self._each([(sid, cid)], JobState.CONFIRMED, reason=note)
            else:
                await self._each([(sid, cid)], JobState.CONFIRMED, reason=note, tx_hash=found[0],
                                 answer=(found[1], found[2]))

    async def resume(self, service_id: int | None = None) -> Resumption:
        """What the ledger says is still owed after a restart, checked against the chain first.

        For each pending job (oldest first): one the chain already holds an answer for (completed,
        or our own ``JobResultSubmitted``) is marked ``confirmed``; one whose answer is stored
        (``answered``/``submitted``) is to be sent again (``resend``; the chain's
        ``ResultAlreadySubmitted`` keeps that single); the rest are to run again from the inputs
        kept in the ledger (``rerun``, in state ``seen``: ``running`` ones are requeued). When the
        chain cannot tell, the job is treated as unanswered: sending again is safe.
        """
        plan = Resumption()
        records = await self.ledger.pending_on_start(service_id)
        if records:
            log.info("consumer.resuming", jobs=len(records))
        for record in records:
            ids = {"call_id": record.call_id, "service_id": record.service_id}
            with structlog.contextvars.bound_contextvars(**ids):
                await self._resume_one(record, plan)
        return plan

    async def _resume_one(self, record: JobRecord, plan: Resumption) -> None:
        key = (record.service_id, record.call_id)
        try:
            answered = await self.is_answered_on_chain(*key, from_block=record.block_number)
        except Exception as exc:  # cannot tell: resubmitting is safe (the chain refuses a duplicate)
            log.warning("consumer.resume_check_failed", error=str(exc))
            answered = False
        if answered:
            await self.confirm_already_answered([key], "already answered on chain")
            log.info("consumer.resume_already_answered", state=str(record.state))
            return
        if record.state in (JobState.ANSWERED, JobState.SUBMITTED) and record.result is not None:
            log.info("consumer.resume_resubmit", state=str(record.state))
            plan.resend.append(JobResult(record.service_id, record.call_id, record.result))
            self._resumed.add(key)
            return
        if record.state is JobState.RUNNING:
            await self.ledger.transition(*key, JobState.SEEN, reason="requeued on restart")
        if not record.inputs and record.inputs != b"":
            log.warning("consumer.resume_no_inputs")
        log.info("consumer.resume_rerun", state=str(record.state))
        plan.rerun.append(record.to_job_call())

    # --- batching -----------------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        """Take ready results, group them per service, send each group as one transaction.

        At most ``max_dispatch`` transactions are being simulated and broadcast at once (their
        simulations overlap; broadcasts are serialized by the nonce lock). While every slot is
        busy, new results queue up and go out together in the next transaction: batches grow
        with the load by themselves. Receipts are awaited in separate tasks.
        """
        while True:
            await self._slots.acquire()
            try:
                first = await self._queue.get()
            except BaseException:
                self._slots.release()
                raise
            if self.batch_window > 0:
                try:
                    await asyncio.sleep(self.batch_window)
                except BaseException:  # closing: back in the queue, which close() keeps for the next start
                    self._queue.put_nowait(first)
                    self._slots.release()
                    raise
            items = [first]
            while not self._queue.empty() and len(items) < self.max_batch:
                items.append(self._queue.get_nowait())
            groups: dict[int, list[_Item]] = defaultdict(list)
            for item in items:
                groups[item.result.service_id].append(item)
            self._spawn(self._dispatch_all(list(groups.values())))

    async def _dispatch_all(self, groups: list[list[_Item]]) -> None:
        try:
            for group in groups:
                try:
                    await self._dispatch(group)
                except asyncio.CancelledError:
                    _defer(group)
                    raise
                except Exception as exc:  # never let one group kill the consumer
                    log.exception("consumer.dispatch_crashed", size=len(group))
                    for item in group:
                        if not item.future.done():
                            item.future.set_exception(exc)
        finally:
            self._slots.release()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _encode(self, items: list[_Item]) -> tuple[bytes, int]:
        """The transaction data of ``items`` (``submitResult`` for one) and its gas limit."""
        service_id = items[0].result.service_id
        if len(items) == 1:
            data = encode_submit_result(service_id, items[0].result.call_id, items[0].result.output)
        else:
            data = encode_submit_results(service_id, [i.result.call_id for i in items],
                                         [i.result.output for i in items])
        return data, self.gas_base + self.gas_per_result * len(items)

    async def _check(self, data: bytes, gas: int, verify: bool) -> BaseException | None:
        """Simulate the transaction; the revert (or transport error) it meets, None when it passes.

        Fresh results are in no transaction of ours yet, so ``latest`` tells what ``pending``
        would, at half the node's time under a burst; resumed results (a transaction of ours may
        hold them) and cautious periods simulate on ``pending``. The fee refresh (every few
        seconds two round trips) overlaps the simulation.
        """
        try:
            await asyncio.gather(
                self.txm.simulate(self.tangle, data, gas=gas, block="pending" if verify else "latest"),
                self.txm.fees())
        except Exception as exc:
            return exc
        return None

    async def _prepare(self, fresh: list[_Item]) -> None:
        """Store the fresh answers of a batch in one ledger operation; an item whose job may not
        be sent now (orphaned by a reorg, answered meanwhile, ...) is resolved and stays unsent."""
        try:
            records = await self.ledger.prepare_answers(_answers(fresh))
        except Exception as exc:  # the ledger failed: the callers hear it, nothing is sent
            log.exception("consumer.store_failed", size=len(fresh))
            for item in fresh:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, record in zip(fresh, records, strict=True):
            if isinstance(record, BaseException):
                if not item.future.done():
                    item.future.set_exception(record)
                continue
            early = _early_outcome(item.result, record)
            if early is not None:
                _resolve(item, early)
                continue
            item.prepared = True

    async def _dispatch(self, items: list[_Item]) -> None:
        """Simulate and broadcast one transaction for ``items``; its receipt is awaited apart.

        Fresh answers are stored in the ledger (``answered``, one operation for the batch) while
        the node simulates the batch: neither waits for the other, and the transaction goes out
        only once both are done.
        """
        service_id = items[0].result.service_id
        verify = any(i.verify for i in items) or time.monotonic() < self._cautious_until
        check = verify or self.presimulate
        data, gas = self._encode(items)
        fresh = [i for i in items if not i.prepared]
        failure: BaseException | None = None
        if fresh:
            if check:
                _, failure = await asyncio.gather(self._prepare(fresh), self._check(data, gas, verify))
            else:
                await self._prepare(fresh)
            ready = [i for i in items if i.prepared and not i.future.done()]
            if not ready:
                return
            if len(ready) != len(items):  # some left the batch: its transaction is another one
                items = ready
                data, gas = self._encode(items)
                failure = await self._check(data, gas, verify) if check else None
        elif check:
            failure = await self._check(data, gas, verify)
        try:
            if failure is not None:
                raise failure
            sent = await self.txm.send(self.tangle, data, gas=gas, simulate=False)
        except TxRevertedError as exc:
            if len(items) > 1:
                log.info("consumer.batch_split", size=len(items), reason=str(exc.revert))
            self._spawn(self._singles(items))  # singles decide done / failed / retry per job
            return
        except Exception as exc:
            log.warning("consumer.send_failed", size=len(items), error=str(exc) or type(exc).__name__)
            self._spawn(self._singles(items))
            return
        keys = [(service_id, i.result.call_id) for i in items]
        self._spawn(self._finish(items, keys, sent))  # the slot is free once the node has the tx

    async def _finish(self, items: list[_Item], keys: list[tuple[int, int]], sent: SentTx) -> None:
        try:
            await self._mark_submitted(keys, sent)
        except asyncio.CancelledError:
            _defer(items)
            raise
        except Exception as exc:  # the ledger failed: the callers hear it, the receipt is not awaited
            log.exception("consumer.mark_submitted_failed", size=len(items), tx_hash=sent.tx_hash)
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        try:
            receipt = await self.txm.wait(sent)
        except asyncio.CancelledError:
            _defer(items)
            raise
        except Exception as exc:
            log.warning("consumer.wait_failed", size=len(items), error=str(exc) or type(exc).__name__)
            await self._back_to_answered(keys)
            await self._singles(items)
            return
        if receipt.status != 1:
            self._cautious_until = time.monotonic() + self.cautious_for
            log.warning("consumer.tx_reverted", size=len(items), tx_hash=receipt.tx_hash,
                        simulating_for_s=self.cautious_for)
            await self._back_to_answered(keys)
            await self._singles(items)
            return
        records = await self._confirm(keys, receipt)
        for item, key in zip(items, keys, strict=True):
            record = records.get(key)
            _resolve(item, SubmitOutcome(item.result.service_id, item.result.call_id, "confirmed",
                                         receipt.tx_hash,
                                         overhead_s=own_overhead_s(record) if record else None))
        log.info("consumer.confirmed", service_id=keys[0][0], call_ids=[c for _, c in keys],
                 tx_hash=receipt.tx_hash, block=receipt.block_number, gas_used=receipt.gas_used)

    async def _singles(self, items: list[_Item]) -> None:
        try:
            outcomes = await asyncio.gather(*(self._single(i.result) for i in items), return_exceptions=True)
        except asyncio.CancelledError:
            _defer(items)
            raise
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                _defer([item])
            elif isinstance(outcome, BaseException):
                if not item.future.done():
                    item.future.set_exception(outcome)
            else:
                _resolve(item, outcome)

    async def _single(self, result: JobResult) -> SubmitOutcome:
        """Send one result until it is confirmed, found done, or fails for good."""
        sid, cid = result.service_id, result.call_id
        key = [(sid, cid)]
        bound = log.bind(service_id=sid, call_id=cid)
        data = encode_submit_result(sid, cid, result.output)
        gas = self.gas_base + self.gas_per_result
        deadline = time.monotonic() + self.retry_for
        delay = 0.2
        while True:
            record = await self.ledger.get(sid, cid)
            if record is not None and record.state is JobState.ORPHANED:
                return SubmitOutcome(sid, cid, "orphaned", reason=record.reason)
            try:
                sent = await self.txm.send(self.tangle, data, gas=gas)
                await self._mark_submitted(key, sent)
                receipt = await self.txm.wait(sent)
                if receipt.status == 1:
                    record = (await self._confirm(key, receipt)).get(key[0])
                    bound.info("consumer.confirmed", tx_hash=receipt.tx_hash, block=receipt.block_number,
                               gas_used=receipt.gas_used)
                    return SubmitOutcome(sid, cid, "confirmed", receipt.tx_hash,
                                         overhead_s=own_overhead_s(record) if record else None)
                revert = await self.txm.revert_reason(self.tangle, data, gas=gas)
                await self._back_to_answered(key)
                if revert.name == "EmptyRevert":  # reverted on chain, not in simulation: try again
                    raise TxError(f"{receipt.tx_hash} reverted without a reproducible reason")
                raise TxRevertedError(revert, tx_hash=receipt.tx_hash)
            except TxRevertedError as exc:
                name = exc.revert.name
                if name in DONE_ERRORS:
                    await self.confirm_already_answered(key, name)
                    bound.info("consumer.already_answered", reason=name)
                    return SubmitOutcome(sid, cid, "already_answered", reason=name)
                reason = str(exc.revert)
                await self._fail(sid, cid, reason)
                bound.warning("consumer.failed", reason=reason)
                return SubmitOutcome(sid, cid, "failed", reason=reason)
            except (LedgerError, asyncio.CancelledError):
                raise
            except Exception as exc:  # transport trouble, timeouts, a stolen nonce: retry a while
                await self._back_to_answered(key)
                if isinstance(exc, TxReplacedError):  # our nonce went to someone else's tx
                    bound.warning("consumer.replaced", error=str(exc))
                    delay = 0.0
                if time.monotonic() >= deadline:
                    reason = f"gave up after {self.retry_for:.0f}s: {exc}"
                    await self._fail(sid, cid, reason)
                    bound.error("consumer.failed", reason=reason)
                    return SubmitOutcome(sid, cid, "failed", reason=reason)
                bound.warning("consumer.retry", error=str(exc) or type(exc).__name__, delay=delay)
                await asyncio.sleep(delay)
                delay = min(max(delay * 2, 0.2), 5.0)

    # --- ledger helpers (tolerant of a reorg orphaning a job mid-flight) -----------------------

    async def _each(self, keys: list[tuple[int, int]], target: JobState,
                    **kwargs: object) -> dict[tuple[int, int], JobRecord]:
        """Move the jobs (together when they can); the rows of those that moved."""
        try:
            records = await self.ledger.transition_many(keys, target, **kwargs)  # type: ignore[arg-type]
            return {(r.service_id, r.call_id): r for r in records}
        except IllegalTransitionError:
            moved: dict[tuple[int, int], JobRecord] = {}
            for key in keys:  # some job moved meanwhile (orphaned, or already there): one by one
                try:
                    moved[key] = await self.ledger.transition(*key, target, **kwargs)  # type: ignore[arg-type]
                except IllegalTransitionError as exc:
                    log.info("consumer.ledger_skip", service_id=key[0], call_id=key[1], error=exc.message)
            return moved

    async def _mark_submitted(self, keys: list[tuple[int, int]], sent: SentTx) -> None:
        # stamped when the node accepted the transaction, not when this write gets its turn
        await self._each(keys, JobState.SUBMITTED, tx_hash=sent.tx_hash, at=sent.sent_unix or None)

    async def _confirm(self, keys: list[tuple[int, int]],
                       receipt: Receipt) -> dict[tuple[int, int], JobRecord]:
        return await self._each(keys, JobState.CONFIRMED, tx_hash=receipt.tx_hash,
                                answer=(receipt.block_number, receipt.block_hash))

    async def _back_to_answered(self, keys: list[tuple[int, int]]) -> None:
        for key in keys:
            record = await self.ledger.get(*key)
            if record is not None and record.state is JobState.SUBMITTED:
                await self._each([key], JobState.ANSWERED, result=record.result or b"")

    async def _fail(self, service_id: int, call_id: int, reason: str) -> None:
        await self._each([(service_id, call_id)], JobState.FAILED, reason=reason)


def _answers(items: list[_Item]) -> list[tuple[int, int, bytes, float]]:
    return [(i.result.service_id, i.result.call_id, i.result.output, i.answered_at) for i in items]


def _early_outcome(result: JobResult, record: JobRecord) -> SubmitOutcome | None:
    """What to tell the caller of a result whose job may not be sent (its stored state says why);
    None when the job is ``answered`` and goes out."""
    sid, cid = result.service_id, result.call_id
    if record.state is JobState.ORPHANED:
        return SubmitOutcome(sid, cid, "orphaned", reason=record.reason)
    if record.state is JobState.CONFIRMED:
        return SubmitOutcome(sid, cid, "already_answered", tx_hash=record.submit_tx_hash,
                             reason=record.reason)
    if record.state is JobState.FAILED:
        return SubmitOutcome(sid, cid, "failed", reason=record.reason)
    if record.state is not JobState.ANSWERED:  # standing by, skipped, or answered by another
        return SubmitOutcome(sid, cid, "answered_by_another", reason=f"{record.state}: {record.reason}")
    return None


def _resolve(item: _Item, outcome: SubmitOutcome) -> None:
    if not item.future.done():
        item.future.set_result(outcome)


def _defer(items: list[_Item]) -> None:
    for item in items:
        if not item.future.done():
            result = item.result
            item.future.set_result(SubmitOutcome(result.service_id, result.call_id, "deferred",
                                                 reason="consumer closed; resumed on next start"))
