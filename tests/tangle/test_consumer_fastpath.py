"""The consumer's fast path on anvil with the real TNT Core contracts: fresh results are sent
without a prior ``eth_call``, broadcasts overlap yet keep one gapless nonce sequence, a batch that
reverts on chain is split and makes the consumer simulate again, and resumed results are always
simulated (an answer already on chain costs no transaction)."""

from __future__ import annotations

import asyncio
import time

import pytest
from eth_abi import encode
from web3 import AsyncWeb3

from blueprint.devnet.setup import DevService, submit_jobs
from blueprint.tangle.chain import ChainClient
from blueprint.tangle.consumer import Consumer, encode_submit_result
from blueprint.tangle.ledger import JobState, Ledger
from blueprint.tangle.txmanager import TxManager
from blueprint.tangle.types import JobCall, JobResult
from tests.tangle.conftest import output, seen_jobs

pytestmark = pytest.mark.chain

ZERO = "0x" + "00" * 32


def inputs(n: int) -> bytes:
    return encode(["string", "uint32", "string"], ["tiny", 8, f'{{"prompt": "fast {n}"}}'])


async def nonce_of(w3: AsyncWeb3, service: DevService) -> int:
    return int(await w3.eth.get_transaction_count(service.operator.address, "latest"))


async def test_overlapping_broadcasts_keep_one_gapless_sequence(
    w3: AsyncWeb3, txm: TxManager, dev_service: DevService
) -> None:
    start = await nonce_of(w3, dev_service)
    sent = await asyncio.gather(*(txm.send(dev_service.operator.address, b"", gas=30_000, simulate=False)
                                  for _ in range(12)))
    assert sorted(s.nonce for s in sent) == list(range(start, start + 12))
    receipts = await asyncio.gather(*(txm.wait(s) for s in sent))
    assert all(r.status == 1 for r in receipts)
    assert await nonce_of(w3, dev_service) == start + 12


async def test_bad_fresh_batch_costs_one_reverted_tx_then_consumer_simulates(
    ledger: Ledger, w3: AsyncWeb3, txm: TxManager, chain_client: ChainClient, dev_service: DevService
) -> None:
    sid = dev_service.service_id
    ids = await submit_jobs(chain_client, dev_service.owner, sid, [(0, inputs(i)) for i in range(2)])
    await seen_jobs(ledger, w3, dev_service, ids)
    ghosts = [JobCall(sid, 10**9 + n, 0, dev_service.owner.address, b"", 1, ZERO, 0, ZERO) for n in (1, 2)]
    await ledger.record_seen(ghosts)
    start = await nonce_of(w3, dev_service)
    async with Consumer(ledger, txm, dev_service.tangle_contract, batch_window=0.05) as consumer:
        mixed = await asyncio.gather(*(consumer.submit(JobResult(sid, c, output(c)))
                                       for c in [ids[0], ghosts[0].call_id, ids[1]]))
        assert [o.status for o in mixed] == ["confirmed", "failed", "confirmed"]
        # the unsimulated batch reverted on chain (1 tx), then two good singles (2 txs); the
        # bad single was simulated and cost nothing
        assert await nonce_of(w3, dev_service) == start + 3
        # right after an on-chain revert the consumer simulates: a bad job costs no transaction
        again = await consumer.submit(JobResult(sid, ghosts[1].call_id, output(0)))
        assert again.status == "failed"
        assert await nonce_of(w3, dev_service) == start + 3
    for c in ids:
        assert len(await chain_client.result_logs(sid, c, dev_service.operator.address)) == 1


async def test_verified_result_already_on_chain_costs_no_transaction(
    ledger: Ledger, w3: AsyncWeb3, txm: TxManager, chain_client: ChainClient, dev_service: DevService
) -> None:
    sid = dev_service.service_id
    (cid,) = await submit_jobs(chain_client, dev_service.owner, sid, [(0, inputs(99))])
    await seen_jobs(ledger, w3, dev_service, [cid])
    await txm.send_and_wait(dev_service.tangle_contract, encode_submit_result(sid, cid, output(1)))
    start = await nonce_of(w3, dev_service)
    async with Consumer(ledger, txm, dev_service.tangle_contract) as consumer:
        outcome = await consumer.submit(JobResult(sid, cid, output(1)), verify=True)
    assert outcome.status == "already_answered"
    assert await nonce_of(w3, dev_service) == start
    assert len(await chain_client.result_logs(sid, cid, dev_service.operator.address)) == 1


async def test_a_fresh_batch_is_stored_once_while_simulated_and_stamped_when_sent(
    ledger: Ledger, w3: AsyncWeb3, txm: TxManager, chain_client: ChainClient, dev_service: DevService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The answers of a fresh batch take one ledger operation (beside the simulation, not before
    it), ``answered_at`` is when the result was handed over and ``submitted_at`` when the node
    accepted the transaction, however late the ledger writes it."""
    sid = dev_service.service_id
    ids = await submit_jobs(chain_client, dev_service.owner, sid, [(0, inputs(200 + i)) for i in range(4)])
    await seen_jobs(ledger, w3, dev_service, ids)
    stores: list[int] = []
    stored: list[float] = []
    written: list[float] = []
    prepare_answers = ledger.prepare_answers
    transition_many = ledger.transition_many

    async def counted(answers):  # type: ignore[no-untyped-def]
        stores.append(len(answers))
        stored.append(time.time())
        return await prepare_answers(answers)

    async def slow_submitted(keys, target, **kwargs):  # type: ignore[no-untyped-def]
        if target is JobState.SUBMITTED:
            await asyncio.sleep(0.3)  # a busy ledger
            written.append(time.time())
        return await transition_many(keys, target, **kwargs)

    async def single(*_args):  # type: ignore[no-untyped-def]
        raise AssertionError("fresh answers are stored with their batch")

    monkeypatch.setattr(ledger, "prepare_answers", counted)
    monkeypatch.setattr(ledger, "transition_many", slow_submitted)
    monkeypatch.setattr(ledger, "prepare_answer", single)
    handed_over = time.time()
    async with Consumer(ledger, txm, dev_service.tangle_contract, batch_window=0.05,
                        presimulate=True) as consumer:
        outcomes = await asyncio.gather(*(consumer.submit(JobResult(sid, c, output(c))) for c in ids))
    assert [o.status for o in outcomes] == ["confirmed"] * 4
    assert len({o.tx_hash for o in outcomes}) == 1 and stores == [4]
    for cid, outcome in zip(ids, outcomes, strict=True):
        record = await ledger.get(sid, cid)
        assert record is not None and record.submitted_at is not None and record.answered_at is not None
        assert handed_over <= record.answered_at < stored[0]  # when handed over, not when stored
        assert record.submitted_at < written[0] - 0.2  # when sent, not when written
        # no handler start here (seen by the scan): the overhead is answered -> sent
        assert outcome.overhead_s == pytest.approx(record.submitted_at - record.answered_at)


async def test_a_result_waiting_in_the_batch_window_is_kept_for_the_next_start_on_close(
    ledger: Ledger, w3: AsyncWeb3, txm: TxManager, chain_client: ChainClient, dev_service: DevService,
) -> None:
    sid = dev_service.service_id
    (cid,) = await submit_jobs(chain_client, dev_service.owner, sid, [(0, inputs(300))])
    await seen_jobs(ledger, w3, dev_service, [cid])
    consumer = Consumer(ledger, txm, dev_service.tangle_contract, batch_window=30.0)
    await consumer.start()
    waiting = asyncio.ensure_future(consumer.submit(JobResult(sid, cid, output(3))))
    await asyncio.sleep(0.2)  # taken by the batch loop, waiting for company
    await consumer.close(grace=1.0)
    outcome = await asyncio.wait_for(waiting, 2.0)
    assert outcome.status == "deferred"
    record = await ledger.get(sid, cid)
    assert record is not None and record.state is JobState.ANSWERED and record.result == output(3)
