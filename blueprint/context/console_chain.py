"""The console's chain panel, read from the daemon's parts: the ledger (jobs and their timings),
the chain-metrics snapshot (cursor, head, jobs per state), the transaction manager's counters,
the heartbeat task, and two cached reads of the chain (the operator's balance and the rewards
the service has paid it, pending in Tangle until claimed).

This lives outside :mod:`blueprint.server` on purpose: the server sees it only as the
:class:`blueprint.server.console.ChainView` Protocol and never imports the chain side.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from blueprint.jobs.codec import JobIndex, decode_inputs, decode_result
from blueprint.tangle.abi import JOB_RESULT_SUBMITTED_TOPIC
from blueprint.tangle.events import decode_job_log, decode_result_log, uint_topic
from blueprint.tangle.ledger import JobRecord, JobState

if TYPE_CHECKING:
    from web3 import AsyncWeb3

    from blueprint.context.metrics import ChainMetrics
    from blueprint.tangle.heartbeat import HeartbeatTask
    from blueprint.tangle.ledger import Ledger
    from blueprint.tangle.txmanager import TxManager

log = structlog.get_logger(__name__)

#: Seconds a balance and rewards read is reused (every open console polls every few seconds).
CHAIN_READ_TTL_S = 10.0
#: Characters of a request or result shown in a job's detail.
PREVIEW_CHARS = 2000
WEI_PER_ETH = 10**18

#: ``pendingRewards(address)`` of Tangle (TNT Core's rewards facet): native-token payments accrued to
#: an account and not yet claimed.
PENDING_REWARDS_ABI: list[dict[str, Any]] = [{
    "type": "function", "name": "pendingRewards", "stateMutability": "view",
    "inputs": [{"name": "account", "type": "address"}],
    "outputs": [{"name": "", "type": "uint256"}],
}]


def answered_by(record: JobRecord) -> str | None:
    """Who answered a job, from the ledger's explicit states: ``us`` when it is ``confirmed`` (our
    result, or the chain said ``ResultAlreadySubmitted``: ours from an earlier attempt),
    ``another operator`` when it is ``answered_by_another``, None while it is open, skipped,
    orphaned or failed."""
    if record.state is JobState.CONFIRMED:
        return "us"
    if record.state is JobState.ANSWERED_BY_ANOTHER:
        return "another operator"
    return None


async def answering_operator(w3: AsyncWeb3 | None, tangle: str, service_id: int, call_id: int,
                             from_block: int) -> str | None:
    """The operator whose ``JobResultSubmitted`` for this call the chain holds (the first one), or
    None when the node cannot say (no chain, pruned logs, a hiccup): the ledger does not keep who
    answered a job another operator completed, so a job's detail asks the chain."""
    if w3 is None:
        return None
    try:
        logs = await w3.eth.get_logs({
            "address": w3.to_checksum_address(tangle), "fromBlock": from_block, "toBlock": "latest",
            "topics": [JOB_RESULT_SUBMITTED_TOPIC, uint_topic(service_id), uint_topic(call_id)],
        })
    except Exception as exc:
        log.debug("console.answer_lookup_failed", call_id=call_id, error=str(exc))
        return None
    for entry in logs:
        try:
            return decode_result_log(entry).operator
        except Exception:
            continue
    return None


def _kind(job_index: int) -> str:
    try:
        return JobIndex(job_index).name.lower()
    except ValueError:
        return str(job_index)


def _row(record: JobRecord, operator: str | None) -> dict[str, Any]:
    who = answered_by(record)
    return {
        "service_id": record.service_id, "call_id": record.call_id, "job_index": record.job_index,
        "job_kind": _kind(record.job_index), "state": str(record.state), "reason": record.reason,
        "from_quote": record.from_quote, "block_number": record.block_number, "tx_hash": record.tx_hash,
        "submit_tx_hash": record.submit_tx_hash, "answer_block": record.answer_block,
        "attempts": record.attempts, "seen_at": record.seen_at, "started_at": record.started_at,
        "answered_at": record.answered_at, "submitted_at": record.submitted_at,
        "confirmed_at": record.confirmed_at, "answered_by": who,
        # The answering operator's address: ours when we answered; another's is found on chain
        # for a job's detail only (the ledger does not keep it).
        "answered_by_operator": operator if who == "us" else None,
        "taken_over": record.taken_over_at is not None, "taken_over_at": record.taken_over_at,
    }


def _preview(text: str) -> str:
    try:
        text = json.dumps(json.loads(text), indent=1, ensure_ascii=False)
    except ValueError:
        pass
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + " ..."


@dataclass
class LedgerChainView:
    """Implements :class:`blueprint.server.console.ChainView` for ``run``.

    Args:
        ledger: the job ledger.
        service_id: the service this daemon answers.
        operator: the operator's address (None: no key loaded).
        w3: for the balance and rewards reads.
        tangle_contract: Tangle's address (``pendingRewards``).
        chain_metrics: the refreshed snapshot of cursor, head and jobs per state.
        txm: the transaction manager (its counters).
        heartbeat: the heartbeat task, once started (None: heartbeats off, e.g. dry run).
    """

    ledger: Ledger
    service_id: int
    operator: str | None
    w3: AsyncWeb3 | None
    tangle_contract: str
    chain_metrics: ChainMetrics | None = None
    txm: TxManager | None = None
    heartbeat: HeartbeatTask | None = None
    _reads: dict[str, Any] | None = None
    _read_at: float = 0.0

    async def summary(self) -> dict[str, Any]:
        snapshot = self.chain_metrics.snapshot() if self.chain_metrics is not None else {}
        cursor, head = snapshot.get("cursor_block"), snapshot.get("head_block")
        out: dict[str, Any] = {
            "service_id": self.service_id,
            "operator": self.operator,
            "cursor_block": cursor,
            "head_block": head,
            "head_lag_blocks": max(0, head - cursor) if cursor is not None and head is not None else None,
            "ledger": snapshot.get("ledger", {}),
            "txs_sent": getattr(self.txm, "txs_sent", None),
            "txs_reverted": getattr(self.txm, "txs_reverted", None),
            "heartbeats_sent": self.heartbeat.beats_sent if self.heartbeat is not None else None,
            "heartbeat_failures": self.heartbeat.failures if self.heartbeat is not None else None,
            # Jobs shared with the service's other operators (taken over by us, answered by
            # another, skipped as not ours, standing by now), from the ledger's states.
            "sharing": await self.ledger.sharing_counts(self.service_id),
        }
        out.update(await self._chain_reads())
        return out

    async def _chain_reads(self) -> dict[str, Any]:
        """Balance and pending rewards, read at most every ``CHAIN_READ_TTL_S``."""
        now = time.monotonic()
        if self._reads is not None and now - self._read_at < CHAIN_READ_TTL_S:
            return self._reads
        reads: dict[str, Any] = {"balance_wei": None, "balance_eth": None, "pending_rewards_wei": None,
                                 "pending_rewards_eth": None}
        if self.w3 is not None and self.operator is not None:
            try:
                balance = int(await self.w3.eth.get_balance(self.operator))
                reads.update(balance_wei=str(balance), balance_eth=_eth(balance))
            except Exception as exc:
                log.debug("console.balance_failed", error=str(exc))
            try:
                tangle = self.w3.eth.contract(address=self.w3.to_checksum_address(self.tangle_contract),
                                              abi=PENDING_REWARDS_ABI)
                rewards = int(await tangle.functions.pendingRewards(self.operator).call())
                reads.update(pending_rewards_wei=str(rewards), pending_rewards_eth=_eth(rewards))
            except Exception as exc:  # an older Tangle without the rewards facet
                log.debug("console.rewards_failed", error=str(exc))
        self._reads, self._read_at = reads, now
        return reads

    async def recent_jobs(self, limit: int) -> list[dict[str, Any]]:
        return [_row(record, self.operator) for record in await self.ledger.recent(limit, self.service_id)]

    async def job(self, service_id: int, call_id: int) -> dict[str, Any] | None:
        record = await self.ledger.get(service_id, call_id)
        if record is None:
            return None
        row = _row(record, self.operator)
        row["caller"] = record.caller
        if record.state is JobState.ANSWERED_BY_ANOTHER:
            row["answered_by_operator"] = await answering_operator(
                self.w3, self.tangle_contract, record.service_id, record.call_id, record.block_number)
        # The ledger drops a job's inputs and result once it is confirmed; the chain keeps both
        # in the logs of the submitting and the answering transactions.
        inputs = record.inputs or await self._chain_inputs(record)
        row["request_preview"] = None
        if inputs:
            try:
                decoded = decode_inputs(inputs)
                row["request_preview"] = _preview(decoded.request)
                row["model"], row["max_tokens"] = decoded.model, decoded.max_tokens
            except Exception as exc:
                row["request_preview"] = f"(inputs not decodable: {exc})"
        result = record.result or await self._chain_result(record)
        row["result_preview"] = None
        if result:
            try:
                row["result_preview"] = _preview(decode_result(result))
            except Exception as exc:
                row["result_preview"] = f"(result not decodable: {exc})"
        return row

    async def _receipt_logs(self, tx_hash: str | None) -> list[Any]:
        if self.w3 is None or not tx_hash:
            return []
        try:
            receipt = await self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except Exception as exc:  # pruned, unknown or the node hiccuped: show what the ledger has
            log.debug("console.receipt_failed", tx=tx_hash, error=str(exc))
            return []
        return list(receipt["logs"])

    async def _chain_inputs(self, record: JobRecord) -> bytes | None:
        for entry in await self._receipt_logs(record.tx_hash):
            try:
                call = decode_job_log(entry)
            except Exception:
                continue
            if (call.service_id, call.call_id) == (record.service_id, record.call_id):
                return call.inputs
        return None

    async def _chain_result(self, record: JobRecord) -> bytes | None:
        for entry in await self._receipt_logs(record.submit_tx_hash):
            topics = entry.get("topics") or []
            if not topics or _topic_hex(topics[0]) != JOB_RESULT_SUBMITTED_TOPIC:
                continue
            try:
                answer = decode_result_log(entry)
            except Exception:
                continue
            if (answer.service_id, answer.call_id) == (record.service_id, record.call_id):
                return answer.output
        return None


def _topic_hex(topic: Any) -> str:
    text = topic.hex() if isinstance(topic, bytes | bytearray) else str(topic)
    return text.lower() if text.startswith("0x") else "0x" + text.lower()


def _eth(wei: int) -> str:
    return f"{wei / WEI_PER_ETH:.6f}"
