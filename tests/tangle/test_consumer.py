"""The consumer and transaction manager on anvil with the real TNT Core contracts: results land,
concurrent submissions share one nonce sequence, batches split around a bad job, a foreign tx
from the operator key is recovered from, and a second result counts as done."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from eth_abi import decode, encode
from web3 import AsyncWeb3

from blueprint.devnet.anvil import Anvil
from blueprint.devnet.setup import DevService, submit_job, submit_jobs
from blueprint.tangle.chain import ChainClient
from blueprint.tangle.consumer import Consumer, encode_submit_result
from blueprint.tangle.ledger import JobState, Ledger
from blueprint.tangle.txmanager import TxManager, TxRevertedError, fetch_receipt
from blueprint.tangle.types import JobCall, JobResult
from tests.tangle.conftest import output, seen_jobs

pytestmark = pytest.mark.chain


def inputs(n: int) -> bytes:
    return encode(["string", "uint32", "string"], ["tiny", 8, f'{{"prompt": "job {n}"}}'])


async def eventually(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within}s")


@pytest.fixture
async def consumer(ledger: Ledger, txm: TxManager, dev_service: DevService) -> AsyncIterator[Consumer]:
    async with Consumer(ledger, txm, dev_service.tangle_contract, retry_for=10.0) as c:
        yield c


async def test_result_lands_and_is_read_back(
    ledger: Ledger, w3: AsyncWeb3, consumer: Consumer, chain_client: ChainClient, dev_service: DevService
) -> None:
    sid = dev_service.service_id
    call_id = await submit_job(chain_client, dev_service.owner, sid, 0, inputs(1))
    (job,) = await seen_jobs(ledger, w3, dev_service, [call_id])
    assert not await consumer.is_answered_on_chain(sid, call_id)
    outcome = await consumer.submit(JobResult(sid, call_id, output(1)))
    assert outcome.status == "confirmed" and outcome.tx_hash
    (found,) = await chain_client.result_logs(sid, call_id, dev_service.operator.address)
    assert decode(["string"], found.output) == ('{"answer": 1}',)
    record = await ledger.get(sid, call_id)
    assert record is not None and record.state is JobState.CONFIRMED
    assert record.submit_tx_hash == outcome.tx_hash
    assert record.submitted_at is not None and record.confirmed_at is not None
    assert await consumer.is_answered_on_chain(sid, call_id, from_block=job.block_number)


async def test_second_result_counts_as_done(
    ledger: Ledger, w3: AsyncWeb3, consumer: Consumer, txm: TxManager, chain_client: ChainClient,
    dev_service: DevService,
) -> None:
    sid = dev_service.service_id
    call_id = await submit_job(chain_client, dev_service.owner, sid, 0, inputs(2))
    await seen_jobs(ledger, w3, dev_service, [call_id])
    # the answer lands behind the consumer's back (say, before a crash the ledger never saw)
    earlier = await txm.send_and_wait(dev_service.tangle_contract,
                                      encode_submit_result(sid, call_id, output(2)))
    with pytest.raises(TxRevertedError) as info:
        await txm.simulate(dev_service.tangle_contract, encode_submit_result(sid, call_id, output(2)))
    assert info.value.revert.name in ("ResultAlreadySubmitted", "JobAlreadyCompleted")
    assert await consumer.is_answered_on_chain(sid, call_id)
    outcome = await consumer.submit(JobResult(sid, call_id, output(2)))
    assert outcome.status == "already_answered"
    record = await ledger.get(sid, call_id)
    assert record is not None and record.state is JobState.CONFIRMED
    assert record.reason == info.value.revert.name
    assert len(await chain_client.result_logs(sid, call_id)) == 1
    # the earlier answer is where the ledger says, so the producer's answer watch follows it
    assert record.submit_tx_hash == earlier.tx_hash
    assert (record.answer_block, record.answer_hash) == (earlier.block_number, earlier.block_hash)
    assert not record.answer_anchored


async def test_concurrent_singles_share_one_nonce_sequence(
    ledger: Ledger, w3: AsyncWeb3, txm: TxManager, chain_client: ChainClient, dev_service: DevService
) -> None:
    sid = dev_service.service_id
    ids = await submit_jobs(chain_client, dev_service.owner, sid, [(0, inputs(i)) for i in range(8)])
    await seen_jobs(ledger, w3, dev_service, ids)
    start_nonce = await w3.eth.get_transaction_count(dev_service.operator.address)
    async with Consumer(ledger, txm, dev_service.tangle_contract, batch_window=0, max_batch=1) as single:
        outcomes = await asyncio.gather(*(single.submit(JobResult(sid, c, output(c))) for c in ids))
    assert [o.status for o in outcomes] == ["confirmed"] * 8
    assert len({o.tx_hash for o in outcomes}) == 8
    nonces = sorted([int((await w3.eth.get_transaction(o.tx_hash))["nonce"]) for o in outcomes])
    assert nonces == list(range(start_nonce, start_nonce + 8))
    for c in ids:
        assert len(await chain_client.result_logs(sid, c, dev_service.operator.address)) == 1


async def test_batch_splits_around_a_bad_job(
    ledger: Ledger, w3: AsyncWeb3, txm: TxManager, chain_client: ChainClient, dev_service: DevService
) -> None:
    sid = dev_service.service_id
    ids = await submit_jobs(chain_client, dev_service.owner, sid, [(1, inputs(i)) for i in range(4)])
    await seen_jobs(ledger, w3, dev_service, ids)
    async with Consumer(ledger, txm, dev_service.tangle_contract, batch_window=0.05, max_batch=16) as batched:
        good = await asyncio.gather(*(batched.submit(JobResult(sid, c, output(c))) for c in ids[:2]))
        assert [o.status for o in good] == ["confirmed"] * 2
        assert good[0].tx_hash == good[1].tx_hash  # one submitResults for both
        # a job the chain does not know, batched with two good ones: the batch reverts in
        # simulation, is split, and only the bad one fails (with a decoded reason)
        zero = "0x" + "00" * 32
        ghost = JobCall(sid, 10**9, 0, dev_service.owner.address, b"", 1, zero, 0, zero)
        await ledger.record_seen([ghost])
        mixed = await asyncio.gather(*(batched.submit(JobResult(sid, c, output(c)))
                                       for c in [ids[2], 10**9, ids[3]]))
    assert [o.status for o in mixed] == ["confirmed", "failed", "confirmed"]
    assert mixed[1].reason and "Unknown" not in mixed[1].reason
    failed = await ledger.get(sid, 10**9)
    assert failed is not None and failed.state is JobState.FAILED and failed.reason == mixed[1].reason
    for c in ids:
        assert len(await chain_client.result_logs(sid, c, dev_service.operator.address)) == 1


async def test_recovers_when_someone_else_uses_the_key(
    ledger: Ledger, w3: AsyncWeb3, consumer: Consumer, txm: TxManager, chain_client: ChainClient,
    dev_service: DevService,
) -> None:
    sid = dev_service.service_id
    ids = await submit_jobs(chain_client, dev_service.owner, sid, [(0, inputs(i)) for i in range(3)])
    await seen_jobs(ledger, w3, dev_service, ids)
    first = await consumer.submit(JobResult(sid, ids[0], output(0)))
    assert first.status == "confirmed"
    # another process sends two transactions from the operator key: our cached nonce is stale
    account = dev_service.operator.account
    for _ in range(2):
        nonce = await w3.eth.get_transaction_count(account.address, "pending")
        signed = account.sign_transaction({
            "type": 2, "chainId": await w3.eth.chain_id, "nonce": nonce, "to": account.address, "value": 0,
            "gas": 21_000, "maxFeePerGas": 10**9, "maxPriorityFeePerGas": 0,
        })
        await w3.eth.wait_for_transaction_receipt(await w3.eth.send_raw_transaction(signed.raw_transaction))
    outcomes = await asyncio.gather(*(consumer.submit(JobResult(sid, c, output(c))) for c in ids[1:]))
    assert [o.status for o in outcomes] == ["confirmed", "confirmed"]
    for c in ids:
        assert len(await chain_client.result_logs(sid, c, dev_service.operator.address)) == 1


async def test_stuck_transaction_is_bumped_with_the_same_nonce(
    w3: AsyncWeb3, anvil: Anvil, dev_service: DevService
) -> None:
    txm = TxManager(w3, dev_service.operator.account, bump_after=0.2, receipt_timeout=10.0)
    anvil.rpc("evm_setAutomine", [False])
    try:
        sent = await txm.send(dev_service.operator.address, b"", gas=30_000, simulate=False)
        first_fees = (sent.max_fee, sent.priority_fee)
        waiter = asyncio.create_task(txm.wait(sent))
        # not mined: the manager re-sends it with higher fees
        await eventually(lambda: len(sent.hashes) >= 2, within=5)
        anvil.rpc("evm_mine", [])
        receipt = await asyncio.wait_for(waiter, 5)
    finally:
        anvil.rpc("evm_setAutomine", [True])
    assert receipt.status == 1
    assert receipt.tx_hash in sent.hashes[1:]  # the bumped version was mined
    mined = await w3.eth.get_transaction(receipt.tx_hash)
    assert mined["nonce"] == sent.nonce
    assert int(mined["maxFeePerGas"]) >= 1.1 * first_fees[0] and int(mined["maxFeePerGas"]) > first_fees[0]
    assert int(mined["maxPriorityFeePerGas"]) >= 1.1 * first_fees[1]


async def test_resume_after_restart(
    ledger: Ledger, w3: AsyncWeb3, txm: TxManager, chain_client: ChainClient, dev_service: DevService
) -> None:
    sid = dev_service.service_id
    ids = await submit_jobs(chain_client, dev_service.owner, sid, [(0, inputs(i)) for i in range(4)])
    await seen_jobs(ledger, w3, dev_service, ids)
    answered, submitted, done_on_chain, running = ids
    # the state a crash left: one answer stored, one sent (but unconfirmed), one answered on
    # chain that the ledger never heard of, one half-run
    await ledger.mark_answered(sid, answered, output(0))
    await ledger.mark_answered(sid, submitted, output(1))
    await ledger.mark_submitted(sid, submitted, "0x" + "00" * 32)
    await txm.send_and_wait(dev_service.tangle_contract, encode_submit_result(sid, done_on_chain, output(2)))
    await ledger.mark_running(sid, running)
    async with Consumer(ledger, txm, dev_service.tangle_contract) as consumer:
        plan = await consumer.resume(sid)
        assert [j.call_id for j in plan.rerun] == [running]
        assert sorted(r.call_id for r in plan.resend) == [answered, submitted]
        assert (await ledger.get(sid, running)).state is JobState.SEEN  # type: ignore[union-attr]
        assert (await ledger.get(sid, done_on_chain)).state is JobState.CONFIRMED  # type: ignore[union-attr]
        outcomes = await asyncio.gather(*(consumer.submit(r, verify=True) for r in plan.resend))
        assert {o.status for o in outcomes} == {"confirmed"}
        states = {(await ledger.get(sid, c)).state for c in (answered, submitted)}  # type: ignore[union-attr]
        assert states == {JobState.CONFIRMED}
    for c in (answered, submitted, done_on_chain):
        assert len(await chain_client.result_logs(sid, c, dev_service.operator.address)) == 1
    assert await chain_client.result_logs(sid, running) == []


async def test_simulated_batch_catches_a_revert_before_any_gas(
    ledger: Ledger, w3: AsyncWeb3, txm: TxManager, chain_client: ChainClient, dev_service: DevService
) -> None:
    """With simulation on (the daemon's default), fresh batches are simulated on ``latest``: a bad
    job in a batch is found without a transaction reverting on chain."""
    sid = dev_service.service_id
    ids = await submit_jobs(chain_client, dev_service.owner, sid, [(1, inputs(i)) for i in range(2)])
    await seen_jobs(ledger, w3, dev_service, ids)
    zero = "0x" + "00" * 32
    ghost = JobCall(sid, 10**9 + 1, 0, dev_service.owner.address, b"", 1, zero, 0, zero)
    await ledger.record_seen([ghost])
    reverted_before = txm.txs_reverted
    async with Consumer(ledger, txm, dev_service.tangle_contract, batch_window=0.05, max_batch=16,
                        presimulate=True) as simulated:
        outcomes = await asyncio.gather(*(simulated.submit(JobResult(sid, c, output(c)))
                                          for c in [ids[0], 10**9 + 1, ids[1]]))
    assert [o.status for o in outcomes] == ["confirmed", "failed", "confirmed"]
    assert txm.txs_reverted == reverted_before  # no reverted transaction was mined: no gas spent
    for c in ids:
        assert len(await chain_client.result_logs(sid, c, dev_service.operator.address)) == 1


async def test_concurrent_receipt_waits_share_batch_requests(
    w3: AsyncWeb3, txm: TxManager, dev_service: DevService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transactions waited for at once are looked up in JSON-RPC batches, not one HTTP exchange
    per transaction and poll; every wait still gets its own transaction's receipt."""
    me = dev_service.operator.address
    sent = [await txm.send(me, b"", gas=21_000, simulate=False) for _ in range(6)]
    posts = 0
    post = w3.provider._post  # type: ignore[attr-defined]

    async def counted(data: bytes) -> bytes:
        nonlocal posts
        posts += 1
        return await post(data)

    monkeypatch.setattr(w3.provider, "_post", counted)
    receipts = await asyncio.gather(*(txm.wait(s) for s in sent))
    assert posts < len(sent)
    monkeypatch.undo()
    for s, receipt in zip(sent, receipts, strict=True):
        assert receipt.tx_hash == s.tx_hash and receipt.status == 1
        assert receipt == await fetch_receipt(w3, s.tx_hash)
