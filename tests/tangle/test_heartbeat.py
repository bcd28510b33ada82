"""Heartbeats on anvil with the real OperatorStatusRegistry: the EIP-712 signature and the direct
call are accepted, the metrics are stored when the service enables custom metrics, the loop keeps
the operator current, and heartbeats share the result nonce sequence without gaps."""

from __future__ import annotations

import asyncio

import pytest
from eth_account import Account
from eth_utils import keccak

from blueprint.devnet.setup import DevService
from blueprint.tangle import abi
from blueprint.tangle.chain import ChainClient
from blueprint.tangle.heartbeat import (
    HEARTBEAT_TYPEHASH,
    HealthSummary,
    HeartbeatTask,
    encode_metrics,
    heartbeat_domain_separator,
)
from blueprint.tangle.txmanager import TxManager, TxRevertedError
from tests.tangle.conftest import STATUS_REGISTRY

pytestmark = pytest.mark.chain

HEALTHY = HealthSummary(nodes=2, healthy_nodes=2, in_flight=3, queued=1, tokens_per_second=12.345)
DEGRADED = HealthSummary(nodes=2, healthy_nodes=1, in_flight=0, queued=0, tokens_per_second=0.0)


def _task(client: ChainClient, dev: DevService, txm: TxManager, summary: HealthSummary = HEALTHY,
          **kwargs: object) -> HeartbeatTask:
    return HeartbeatTask(txm, client.w3, STATUS_REGISTRY, service_id=dev.service_id,
                         blueprint_id=dev.blueprint_id, health=lambda: summary, **kwargs)  # type: ignore[arg-type]


async def _state(client: ChainClient, dev: DevService) -> tuple:
    registry = client.status_registry.functions
    return await registry.getOperatorState(dev.service_id, dev.operator.address).call()


def test_summary_status_and_metrics() -> None:
    assert HEALTHY.status_code == 0 and DEGRADED.status_code == 1
    assert HealthSummary(1, 0, 0, 0, 0.0).status_code == 2
    assert HealthSummary(0, 0, 0, 0, 0.0).status_code == 2
    assert dict(HEALTHY.metric_pairs())["tokens_per_second_milli"] == 12345


async def test_domain_and_typehash_match_the_deployed_registry(chain_client: ChainClient) -> None:
    fns = chain_client.status_registry.functions
    assert await fns.HEARTBEAT_TYPEHASH().call() == HEARTBEAT_TYPEHASH
    chain_id = await chain_client.w3.eth.chain_id
    assert await fns.DOMAIN_SEPARATOR().call() == heartbeat_domain_separator(chain_id, STATUS_REGISTRY)


async def test_signed_and_direct_heartbeats_are_accepted(chain_client: ChainClient,
                                                         dev_service: DevService) -> None:
    txm = TxManager(chain_client.w3, dev_service.operator.account)
    registry = chain_client.status_registry.functions
    # The service owner enables custom metrics, so the registry stores the values we send.
    await chain_client.send(dev_service.owner.account,
                            chain_client.w3.eth.contract(address=STATUS_REGISTRY, abi=_ENABLE_ABI)
                            .functions.enableCustomMetrics(dev_service.service_id, True))
    receipt = await _task(chain_client, dev_service, txm).beat()
    topics = [log["topics"][0].lower() for log in receipt.logs]  # the node's JSON, hex strings
    assert abi.HEARTBEAT_RECEIVED_TOPIC.lower() in topics
    state = await _state(chain_client, dev_service)
    assert state[1] == 1 and state[3] == 0  # one beat, Healthy
    assert await registry.isHeartbeatCurrent(dev_service.service_id, dev_service.operator.address).call()
    assert await registry.isOnline(dev_service.service_id, dev_service.operator.address).call()
    metrics = chain_client.w3.eth.contract(address=STATUS_REGISTRY, abi=_METRIC_ABI).functions
    value = await metrics.getMetricValue(
        dev_service.service_id, dev_service.operator.address, "tokens_per_second_milli").call()
    assert value == 12345
    assert state[4] == keccak(encode_metrics(HEALTHY.metric_pairs()))

    await _task(chain_client, dev_service, txm, DEGRADED, signed=False).beat()
    state = await _state(chain_client, dev_service)
    assert state[1] == 2 and state[3] == 1  # two beats, Degraded


async def test_a_stranger_cannot_beat_for_the_service(chain_client: ChainClient,
                                                      dev_service: DevService) -> None:
    stranger = Account.create()  # unfunded: the simulation refuses before any gas is needed
    txm = TxManager(chain_client.w3, stranger)
    with pytest.raises(TxRevertedError) as info:
        await _task(chain_client, dev_service, txm).beat()
    assert info.value.revert.name == "NotRegisteredOperator"


async def test_loop_beats_and_shares_the_nonce_sequence(chain_client: ChainClient,
                                                        dev_service: DevService) -> None:
    txm = TxManager(chain_client.w3, dev_service.operator.account)
    before = (await _state(chain_client, dev_service))[1]
    start_nonce = await chain_client.w3.eth.get_transaction_count(dev_service.operator.address)
    task = _task(chain_client, dev_service, txm, interval_s=0.2)
    await task.start()
    try:
        # Meanwhile other transactions of the same key go through the same manager.
        others = [await txm.send(STATUS_REGISTRY, await task.calldata(HEALTHY)) for _ in range(3)]
        for sent in others:
            assert (await txm.wait(sent, limit=20)).status == 1
        for _ in range(100):
            if task.beats_sent >= 3:
                break
            await asyncio.sleep(0.1)
    finally:
        await task.stop()
    assert not task.running and task.beats_sent >= 3 and task.failures == 0
    end_nonce = await chain_client.w3.eth.get_transaction_count(dev_service.operator.address)
    assert end_nonce - start_nonce == task.beats_sent + 3  # no nonce reused, none skipped
    assert (await _state(chain_client, dev_service))[1] == before + task.beats_sent + 3


async def test_interval_comes_from_the_service_config(chain_client: ChainClient,
                                                      dev_service: DevService) -> None:
    txm = TxManager(chain_client.w3, dev_service.operator.account)
    task = _task(chain_client, dev_service, txm)
    config = await task.read_config()
    assert config.interval_s > 0 and config.max_missed > 0
    assert await task.period_s() == pytest.approx(config.interval_s * 0.5)


_ENABLE_ABI = [{"type": "function", "name": "enableCustomMetrics", "stateMutability": "nonpayable",
                "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "enabled", "type": "bool"}],
                "outputs": []}]
_METRIC_ABI = [{"type": "function", "name": "getMetricValue", "stateMutability": "view",
                "inputs": [{"name": "serviceId", "type": "uint64"}, {"name": "operator", "type": "address"},
                           {"name": "metricName", "type": "string"}],
                "outputs": [{"name": "", "type": "uint256"}]}]


async def test_loop_survives_failures_and_stops(chain_client: ChainClient, dev_service: DevService) -> None:
    task = _task(chain_client, dev_service, TxManager(chain_client.w3, Account.create()), interval_s=0.1)
    await task.start()
    try:
        for _ in range(50):
            if task.failures:
                break
            await asyncio.sleep(0.05)
        assert task.running and task.failures >= 1 and task.beats_sent == 0
    finally:
        await task.stop(timeout=2)
    assert not task.running
