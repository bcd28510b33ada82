"""The producer on anvil with the real TNT Core contracts: once-only delivery, resume from the
durable cursor, WebSocket push, confirmation depth, reorgs, bad logs and a dead node."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from eth_abi import encode
from web3 import AsyncHTTPProvider, AsyncWeb3

from blueprint.devnet.anvil import DEV_KEYS, Anvil, free_port, start_anvil
from blueprint.devnet.setup import DevService, setup_dev_service, submit_job
from blueprint.tangle.abi import JOB_SUBMITTED_TOPIC
from blueprint.tangle.chain import ChainClient
from blueprint.tangle.events import uint_topic
from blueprint.tangle.ledger import JobState, Ledger
from blueprint.tangle.producer import Producer
from blueprint.tangle.types import JobCall

pytestmark = pytest.mark.chain
TANGLE = "0x0165878A594ca255338adfa4d48449f69242Eb8F"
STAKING = "0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9"
STATUS_REGISTRY = "0x2bdCC0de6bE1f7D2ee689a0342D76F52E8EFABa3"


def inputs(n: int) -> bytes:
    return encode(["string", "uint32", "string"], ["tiny", 8, f'{{"prompt": "job {n}"}}'])


async def head(w3: AsyncWeb3) -> int:
    return int(await w3.eth.block_number)


def make(ledger: Ledger, w3: AsyncWeb3, service: DevService, start: int, **kwargs: object) -> Producer:
    return Producer(ledger, w3, tangle_address=service.tangle_contract, service_id=service.service_id,
                    start_block=start, **kwargs)  # type: ignore[arg-type]


async def collect(producer: Producer, n: int, within: float = 10.0) -> list[JobCall]:
    out: list[JobCall] = []
    async with asyncio.timeout(within):
        while len(out) < n:
            out.append(await producer.get())
    return out


async def test_delivers_once_and_resumes_from_cursor(
    ledger: Ledger, w3: AsyncWeb3, chain_client: ChainClient, dev_service: DevService
) -> None:
    start = await head(w3) + 1
    ids = [await submit_job(chain_client, dev_service.owner, dev_service.service_id, i % 3, inputs(i))
           for i in range(3)]
    producer = make(ledger, w3, dev_service, start, poll_interval=0.05)
    await producer.start()
    try:
        got = await collect(producer, 3)
        assert [j.call_id for j in got] == ids
        assert [j.job_index for j in got] == [0, 1, 2]
        assert got[1].inputs == inputs(1) and got[0].caller == dev_service.owner.address
        await asyncio.sleep(0.3)  # several more scans over the same blocks: nothing new
        assert producer.pending() == 0
    finally:
        await producer.stop()
    cursor = await ledger.get_cursor(producer.stream)
    assert cursor is not None and cursor.block_number >= got[-1].block_number

    more = [await submit_job(chain_client, dev_service.owner, dev_service.service_id, 0, inputs(9))
            for _ in range(2)]
    again = make(ledger, w3, dev_service, start, poll_interval=0.05)  # a restart: same ledger
    await again.start()
    try:
        got = await collect(again, 2)
        assert [j.call_id for j in got] == more
        await asyncio.sleep(0.3)
        assert again.pending() == 0
    finally:
        await again.stop()
    assert (await ledger.counts())[JobState.SEEN] == 5


async def test_websocket_push_delivers_without_polling(
    ledger: Ledger, w3: AsyncWeb3, anvil: Anvil, chain_client: ChainClient, dev_service: DevService
) -> None:
    producer = make(ledger, w3, dev_service, await head(w3) + 1, ws_url=anvil.ws_url, poll_interval=30.0)
    await producer.start()
    try:
        for _ in range(250):
            if producer.ws_connected:
                break
            await asyncio.sleep(0.02)
        assert producer.ws_connected
        await asyncio.sleep(0.2)  # the first (backfill) scan is done
        sent = time.monotonic()
        call_id = await submit_job(chain_client, dev_service.owner, dev_service.service_id, 0, inputs(1))
        (job,) = await collect(producer, 1, within=3.0)
        assert job.call_id == call_id
        assert time.monotonic() - sent < 2.0
        assert producer.stats.ws_logs >= 1
    finally:
        await producer.stop()


async def test_confirmation_depth(
    ledger: Ledger, w3: AsyncWeb3, anvil: Anvil, chain_client: ChainClient, dev_service: DevService
) -> None:
    producer = make(ledger, w3, dev_service, await head(w3) + 1, confirmations=3)
    call_id = await submit_job(chain_client, dev_service.owner, dev_service.service_id, 0, inputs(1))
    assert await producer.scan_once() == 0
    anvil.rpc("anvil_mine", [2])
    assert await producer.scan_once() == 0  # 2 blocks deep
    assert await ledger.get(dev_service.service_id, call_id) is None
    anvil.rpc("anvil_mine", [1])
    assert await producer.scan_once() == 1  # 3 deep
    assert (await producer.get()).call_id == call_id


async def test_reorg_orphans_a_vanished_job_and_keeps_a_reincluded_one(
    ledger: Ledger, w3: AsyncWeb3, anvil: Anvil, chain_client: ChainClient, dev_service: DevService
) -> None:
    producer = make(ledger, w3, dev_service, await head(w3) + 1)
    sid = dev_service.service_id
    kept = await submit_job(chain_client, dev_service.owner, sid, 0, inputs(1))
    kept_tx = (await ledger_tx_of(w3, sid, kept))
    raw_kept = anvil.rpc("eth_getRawTransactionByHash", [kept_tx])
    vanished = await submit_job(chain_client, dev_service.owner, sid, 1, inputs(2))
    assert await producer.scan_once() == 2
    before = await ledger.get(sid, kept)
    assert before is not None
    await ledger.mark_running(sid, kept)

    # replace the last 2 blocks (both jobs); the new chain re-includes only the first job's tx,
    # one block later (in the same place the new block would be identical to the old one)
    anvil.rpc("anvil_reorg", [2, [[raw_kept, 1]]])
    assert await producer.scan_once() == 0  # nothing new to deliver: the kept job is not re-sent
    assert producer.stats.reorgs == 1
    gone = await ledger.get(sid, vanished)
    assert gone is not None and gone.state is JobState.ORPHANED
    still = await ledger.get(sid, kept)
    assert still is not None and still.state is JobState.RUNNING
    assert still.block_hash != before.block_hash  # it follows the new chain
    cursor = await ledger.get_cursor(producer.stream)
    assert cursor is not None
    block = await w3.eth.get_block(cursor.block_number)
    assert "0x" + bytes(block["hash"]).hex() == cursor.block_hash  # the cursor is canonical
    # a later scan finds nothing more and the orphan stays orphaned
    assert await producer.scan_once() == 0
    assert (await ledger.get(sid, vanished)).state is JobState.ORPHANED  # type: ignore[union-attr]


async def _answer_stand_in(anvil: Anvil, w3: AsyncWeb3) -> tuple[str, int, str]:
    """A transaction mined in its own block, standing in for our submitResult: the answer watch
    looks only at where a transaction landed. Returns (tx hash, block number, block hash)."""
    sender = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # anvil's dev account 1 (unlocked)
    tx = anvil.rpc("eth_sendTransaction", [{"from": sender, "to": sender, "value": "0x1"}])
    receipt = await w3.eth.wait_for_transaction_receipt(tx, timeout=10)  # type: ignore[arg-type]
    return str(tx), int(receipt["blockNumber"]), "0x" + bytes(receipt["blockHash"]).hex()


async def _confirm_with_answer(ledger: Ledger, sid: int, cid: int, tx: str, block: int,
                               block_hash: str) -> None:
    await ledger.mark_running(sid, cid)
    await ledger.mark_answered(sid, cid, b"result")
    await ledger.mark_submitted(sid, cid, tx)
    await ledger.mark_confirmed(sid, cid, tx_hash=tx, answer=(block, block_hash))


async def test_answer_dropped_by_a_reorg_beyond_the_cursor_reopens_its_job(
    ledger: Ledger, w3: AsyncWeb3, anvil: Anvil, chain_client: ChainClient, dev_service: DevService
) -> None:
    """The job's own block stays canonical (the cursor check sees nothing), but the block holding
    our answer is replaced by one without it: the answer watch re-opens the job, once."""
    producer = make(ledger, w3, dev_service, await head(w3) + 1)
    sid = dev_service.service_id
    cid = await submit_job(chain_client, dev_service.owner, sid, 0, inputs(7))
    assert [j.call_id for j in await _scan_and_take(producer)] == [cid]
    tx, block, block_hash = await _answer_stand_in(anvil, w3)
    await _confirm_with_answer(ledger, sid, cid, tx, block, block_hash)
    cursor = await ledger.get_cursor(producer.stream)
    assert cursor is not None and cursor.block_number == block - 1  # the answer is past the cursor

    anvil.rpc("anvil_reorg", [1, []])  # the answer's block, replaced by an empty one
    assert await producer.scan_once() == 0  # this pass finds the lost answer and rewinds
    assert producer.stats.reorgs == 0 and producer.stats.answers_lost == 1
    record = await ledger.get(sid, cid)
    assert record is not None and record.state is JobState.ORPHANED
    assert [j.call_id for j in await _scan_and_take(producer)] == [cid]  # delivered again
    assert (await ledger.get(sid, cid)).state is JobState.SEEN  # type: ignore[union-attr]
    assert await producer.scan_once() == 0  # and only once


async def test_an_answer_found_reverted_reopens_its_job(
    ledger: Ledger, w3: AsyncWeb3, anvil: Anvil, chain_client: ChainClient, dev_service: DevService
) -> None:
    """A reorg can re-include our answer where it reverts (say, ordered before its job): a
    receipt is not enough, it must be a successful one."""
    producer = make(ledger, w3, dev_service, await head(w3) + 1)
    sid = dev_service.service_id
    cid = await submit_job(chain_client, dev_service.owner, sid, 0, inputs(9))
    assert [j.call_id for j in await _scan_and_take(producer)] == [cid]
    sender = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # anvil's dev account 1 (unlocked)
    tx = anvil.rpc("eth_sendTransaction", [{"from": sender, "to": dev_service.tangle_contract,
                                            "data": "0xdeadbeef", "gas": hex(100_000)}])
    receipt = await w3.eth.wait_for_transaction_receipt(tx, timeout=10)  # type: ignore[arg-type]
    assert receipt["status"] == 0  # an unknown selector: mined, reverted
    # the ledger believes the answer sits in that block under another hash (the block was replaced)
    await _confirm_with_answer(ledger, sid, cid, str(tx), int(receipt["blockNumber"]), "0x" + "ab" * 32)

    assert await producer.scan_once() == 0
    assert producer.stats.answers_lost == 1
    assert (await ledger.get(sid, cid)).state is JobState.ORPHANED  # type: ignore[union-attr]
    assert [j.call_id for j in await _scan_and_take(producer)] == [cid]  # answered anew


async def test_answer_reincluded_elsewhere_is_followed_not_reopened(
    ledger: Ledger, w3: AsyncWeb3, anvil: Anvil, chain_client: ChainClient, dev_service: DevService
) -> None:
    producer = make(ledger, w3, dev_service, await head(w3) + 1)
    sid = dev_service.service_id
    cid = await submit_job(chain_client, dev_service.owner, sid, 0, inputs(8))
    assert [j.call_id for j in await _scan_and_take(producer)] == [cid]
    tx, block, block_hash = await _answer_stand_in(anvil, w3)
    await _confirm_with_answer(ledger, sid, cid, tx, block, block_hash)
    raw = anvil.rpc("eth_getRawTransactionByHash", [tx])
    anvil.rpc("anvil_mine", [1])
    anvil.rpc("anvil_reorg", [2, [[raw, 1]]])  # the answer moves one block later

    assert await producer.scan_once() == 0
    record = await ledger.get(sid, cid)
    assert record is not None and record.state is JobState.CONFIRMED
    assert record.answer_block == block + 1 and record.answer_hash != block_hash
    assert producer.stats.answers_lost == 0
    await producer.scan_once()  # the cursor now covers the new block: the answer is anchored
    assert (await ledger.get(sid, cid)).answer_anchored  # type: ignore[union-attr]
    assert await ledger.unanchored_answers(await head(w3), sid) == []


async def _scan_and_take(producer: Producer) -> list[JobCall]:
    delivered = await producer.scan_once()
    return [producer._out.get_nowait() for _ in range(delivered)]


async def ledger_tx_of(w3: AsyncWeb3, service_id: int, call_id: int) -> str:
    topics = [JOB_SUBMITTED_TOPIC, uint_topic(service_id), uint_topic(call_id)]
    logs = await w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest", "topics": topics})
    return "0x" + bytes(logs[-1]["transactionHash"]).hex()


async def test_bad_log_is_recorded_and_skipped(
    ledger: Ledger, w3: AsyncWeb3, dev_service: DevService
) -> None:
    producer = make(ledger, w3, dev_service, 0)
    good = {
        "address": dev_service.tangle_contract, "blockNumber": 5, "blockHash": "0x" + "11" * 32,
        "logIndex": 0, "transactionHash": "0x" + "22" * 32,
        "topics": [JOB_SUBMITTED_TOPIC, uint_topic(dev_service.service_id), uint_topic(77)],
        "data": "0x" + encode(["uint8", "address", "bytes"], [0, dev_service.owner.address, b"ok"]).hex(),
    }
    bad = dict(good, data="0x1234", logIndex=1)
    jobs, blocks = producer._decode([bad, good])
    assert [j.call_id for j in jobs] == [77]
    assert producer.stats.decode_errors == 1
    assert blocks == [(5, "0x" + "11" * 32)]


async def test_dead_node_backs_off_without_crashing(ledger: Ledger, dev_service: DevService) -> None:
    dead = AsyncWeb3(AsyncHTTPProvider(f"http://127.0.0.1:{free_port()}", exception_retry_configuration=None))
    producer = Producer(ledger, dead, tangle_address=dev_service.tangle_contract,
                        service_id=dev_service.service_id, ws_url=f"ws://127.0.0.1:{free_port()}",
                        poll_interval=0.05, max_backoff=0.4)
    await producer.start()
    try:
        await asyncio.sleep(1.5)
        assert all(not t.done() for t in producer._tasks)  # still alive
        assert 2 <= producer.stats.scan_errors <= 12  # retried, with backoff (no spinning)
        assert producer.stats.delivered == 0 and not producer.ws_connected
    finally:
        await producer.stop()
        await dead.provider.disconnect()


async def test_node_restart_reconnects_and_backfills(tmp_path: Path, ledger: Ledger) -> None:
    """Stop the node (its state dumped), submit nothing while it is down, bring it back on the
    same port: the socket reconnects, the scan backfills from the cursor, nothing is repeated."""
    dump = tmp_path / "anvil-state.json"
    port = free_port()
    node = start_anvil(port=port, extra_args=["--dump-state", str(dump)])
    try:
        client = ChainClient.connect(node.http_url, tangle_address=TANGLE, staking_address=STAKING,
                                     status_registry_address=STATUS_REGISTRY)
        service = await setup_dev_service(client, owner_key=DEV_KEYS[0])
        w3 = AsyncWeb3(AsyncHTTPProvider(node.http_url, exception_retry_configuration=None))
        producer = Producer(ledger, w3, tangle_address=TANGLE, service_id=service.service_id,
                            ws_url=node.ws_url, poll_interval=0.1, max_backoff=0.5,
                            start_block=int(await w3.eth.block_number) + 1)
        await producer.start()
        first = await submit_job(client, service.owner, service.service_id, 0, inputs(1))
        assert [j.call_id for j in await collect(producer, 1)] == [first]
        await client.close()

        node.stop()  # SIGTERM: anvil writes its state
        await asyncio.sleep(1.0)
        assert not producer.ws_connected and producer.stats.scan_errors >= 1
        assert all(not t.done() for t in producer._tasks)
        node = start_anvil(port=port, state=dump)

        client = ChainClient.connect(node.http_url, tangle_address=TANGLE, staking_address=STAKING,
                                     status_registry_address=STATUS_REGISTRY)
        second = await submit_job(client, service.owner, service.service_id, 0, inputs(2))
        assert [j.call_id for j in await collect(producer, 1, within=10)] == [second]
        for _ in range(100):
            if producer.ws_connected:
                break
            await asyncio.sleep(0.05)
        assert producer.ws_connected and producer.stats.ws_connects >= 2
        await asyncio.sleep(0.3)
        assert producer.pending() == 0 and producer.stats.reorgs == 0  # same chain: no false reorg
        await producer.stop()
        await client.close()
        await w3.provider.disconnect()
    finally:
        node.stop()


class _RangeLimitedNode:
    """A node (JSON-RPC provider) that refuses getLogs over more than 3 blocks, like many hosted RPCs."""

    def __init__(self, head: int) -> None:
        self.head = head
        self.ranges: list[tuple[int, int]] = []

    async def make_request(self, method: str, params: list[object]) -> dict[str, object]:
        if method == "eth_getBlockByNumber":
            number = self.head if params[0] == "latest" else int(str(params[0]), 16)
            return {"result": {"number": hex(number), "hash": "0x" + f"{number % 256:02x}" * 32}}
        assert method == "eth_getLogs"
        query = params[0]
        first, last = int(query["fromBlock"], 16), int(query["toBlock"], 16)  # type: ignore[index]
        if last - first + 1 > 3:
            raise ValueError("query exceeds max block range 3")
        self.ranges.append((first, last))
        return {"result": []}


async def test_get_logs_ranges_are_chunked_and_shrink_when_refused(ledger: Ledger) -> None:
    fake = type("W3", (), {})()
    fake.provider = _RangeLimitedNode(head=20)
    producer = Producer(ledger, fake, tangle_address=TANGLE, service_id=1, start_block=1,  # type: ignore[arg-type]
                        chunk_size=8)
    assert await producer.scan_once() == 0
    assert producer.chunk_size == 2  # 8 -> 4 -> 2
    covered = [n for first, last in fake.provider.ranges for n in range(first, last + 1)]
    assert covered == list(range(1, 21))  # every block exactly once
    cursor = await ledger.get_cursor(producer.stream)
    assert cursor is not None and cursor.block_number == 20


async def test_removed_log_from_the_socket_orphans_its_job(ledger: Ledger) -> None:
    fake = type("W3", (), {})()
    producer = Producer(ledger, fake, tangle_address=TANGLE, service_id=3)  # type: ignore[arg-type]
    data = "0x" + encode(["uint8", "address", "bytes"], [0, TANGLE, b"in"]).hex()
    entry = {
        "address": TANGLE, "blockNumber": 9, "blockHash": "0x" + "aa" * 32, "logIndex": 0,
        "transactionHash": "0x" + "bb" * 32, "topics": [JOB_SUBMITTED_TOPIC, uint_topic(3), uint_topic(5)],
        "data": data, "removed": False,
    }
    await producer._on_ws_log(entry)  # pushed: delivered at once (confirmations 0)
    assert (await producer.get()).call_id == 5
    await producer._on_ws_log(dict(entry, removed=True))
    record = await ledger.get(3, 5)
    assert record is not None and record.state is JobState.ORPHANED
    assert producer.stats.orphaned == 1
    await producer._on_ws_log(dict(entry, blockHash="0x" + "cc" * 32))  # re-mined elsewhere: back
    assert (await producer.get()).block_hash == "0x" + "cc" * 32
    assert (await ledger.get(3, 5)).state is JobState.SEEN  # type: ignore[union-attr]
