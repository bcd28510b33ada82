"""Blueprint, operator and service set-up on the real TNT Core contracts (anvil + LocalTestnet)."""

from __future__ import annotations

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account

from blueprint.devnet import setup
from blueprint.devnet.anvil import DEV_KEYS
from blueprint.tangle import abi
from blueprint.tangle.chain import ChainClient, TxRevertedError
from blueprint.tangle.keystore import Operator, load_operator

pytestmark = pytest.mark.chain

SERVICE_ACTIVE = 1


def job_inputs(model: str = "tiny", max_tokens: int = 8, request: str = '{"messages": []}') -> bytes:
    return abi_encode(["string", "uint32", "string"], [model, max_tokens, request])


async def test_dev_service_is_active_with_our_operator(chain_client: ChainClient, dev_service) -> None:
    tangle = chain_client.tangle.functions
    service = await chain_client.call(tangle.getService(dev_service.service_id))
    assert service[0] == dev_service.blueprint_id
    assert service[1] == dev_service.owner.address
    assert service[11] == SERVICE_ACTIVE
    assert await chain_client.call(tangle.getServiceOperators(dev_service.service_id)) == [
        dev_service.operator.address
    ]
    stored_key = await chain_client.call(
        tangle.getOperatorPublicKey(dev_service.blueprint_id, dev_service.operator.address))
    assert stored_key == dev_service.operator.public_key
    assert len(stored_key) == 65 and stored_key[0] == 4
    assert await chain_client.call(chain_client.staking.functions.isOperator(dev_service.operator.address))
    # the request id and the service id come from different counters: both were read from events
    request = await chain_client.call(tangle.getServiceRequest(dev_service.request_id))
    assert request[0] == dev_service.blueprint_id and request[13] is True  # activated


async def test_setup_steps_are_idempotent(chain_client: ChainClient, dev_service) -> None:
    stake = await setup.ensure_operator_bonded(chain_client, dev_service.operator)
    assert stake >= setup.DEFAULT_BOND
    again = await setup.register_operator(
        chain_client, dev_service.operator, dev_service.blueprint_id, dev_service.rpc_address)
    assert again is False


async def test_job_submitted_log_has_the_deployed_layout(chain_client: ChainClient, dev_service) -> None:
    inputs = job_inputs(request='{"messages": [{"role": "user", "content": "hi"}]}')
    call_id = await setup.submit_job(chain_client, dev_service.owner, dev_service.service_id, 0, inputs)
    logs = await chain_client.w3.eth.get_logs({
        "address": chain_client.tangle_address, "fromBlock": 0,
        "topics": [abi.JOB_SUBMITTED_TOPIC, "0x" + dev_service.service_id.to_bytes(32, "big").hex()],
    })
    (entry,) = [e for e in logs if int.from_bytes(bytes(e["topics"][2]), "big") == call_id]
    # deployed: 3 topics, jobIndex in the data (the shipped ABI's 4-topic layout would fail here)
    assert len(entry["topics"]) == 3
    job_index, caller, got_inputs = abi_decode(list(abi.JOB_SUBMITTED_DATA_TYPES), bytes(entry["data"]))
    assert (job_index, caller.lower(), got_inputs) == (0, dev_service.owner.address.lower(), inputs)

    # The same job in the shipped-ABI layout (jobIndex as topic 3) carries the rest in the data.
    legacy_topics = [*entry["topics"], job_index.to_bytes(32, "big")]
    legacy_data = abi_encode(list(abi.JOB_SUBMITTED_INDEXED_DATA_TYPES), [caller, got_inputs])
    assert int.from_bytes(bytes(legacy_topics[3]), "big") == 0
    assert abi_decode(list(abi.JOB_SUBMITTED_INDEXED_DATA_TYPES), legacy_data) == (caller.lower(), inputs)

    # The package's own decoder accepts both.
    from blueprint.tangle.events import decode_job_log

    real = decode_job_log(entry)
    assert (real.service_id, real.call_id, real.job_index, real.inputs) == (
        dev_service.service_id, call_id, 0, inputs)
    legacy = decode_job_log({**dict(entry), "topics": legacy_topics, "data": legacy_data})
    assert (legacy.call_id, legacy.job_index, legacy.caller.lower(), legacy.inputs) == (
        call_id, 0, caller.lower(), inputs)

    on_chain = await chain_client.get_job_call(dev_service.service_id, call_id)
    assert on_chain.exists and on_chain.job_index == 0 and not on_chain.completed


async def test_result_round_trip_and_decoded_second_result(chain_client: ChainClient, dev_service) -> None:
    call_id = await setup.submit_job(chain_client, dev_service.owner, dev_service.service_id, 2, job_inputs())
    output = abi_encode(["string"], ['{"object": "list"}'])
    start = await chain_client.w3.eth.block_number
    await chain_client.send(dev_service.operator.account, chain_client.tangle.functions.submitResult(
        dev_service.service_id, call_id, output))
    result = await setup.wait_for_result(chain_client, dev_service.service_id, call_id, timeout=5,
                                         operator=dev_service.operator.address, from_block=start)
    assert (result.call_id, result.operator, result.output) == (call_id, dev_service.operator.address, output)
    assert (await chain_client.get_job_call(dev_service.service_id, call_id)).completed

    with pytest.raises(TxRevertedError) as info:
        await chain_client.send(dev_service.operator.account, chain_client.tangle.functions.submitResult(
            dev_service.service_id, call_id, output))
    assert info.value.revert.name == "JobAlreadyCompleted"
    assert info.value.revert.args == (dev_service.service_id, call_id)


async def test_wait_for_result_times_out(chain_client: ChainClient, dev_service) -> None:
    call_id = await setup.submit_job(chain_client, dev_service.owner, dev_service.service_id, 1, job_inputs())
    with pytest.raises(Exception, match="no result"):
        await setup.wait_for_result(chain_client, dev_service.service_id, call_id, timeout=0.3,
                                    poll_interval=0.1)


async def test_only_permitted_callers_submit(chain_client: ChainClient, dev_service) -> None:
    stranger = Account.create()
    await setup.fund_account(chain_client, dev_service.owner.account, stranger.address, eth=10**18)
    with pytest.raises(TxRevertedError) as info:
        await setup.submit_job(chain_client, stranger, dev_service.service_id, 0, job_inputs())
    assert info.value.revert.name == "NotPermittedCaller"
    assert info.value.revert.args == (dev_service.service_id, stranger.address.lower())
    await setup.add_permitted_caller(chain_client, dev_service.owner, dev_service.service_id,
                                     stranger.address)
    call_id = await setup.submit_job(chain_client, stranger, dev_service.service_id, 0, job_inputs())
    assert (await chain_client.get_job_call(dev_service.service_id, call_id)).caller == stranger.address


async def test_burst_submission_returns_consecutive_call_ids(chain_client: ChainClient, dev_service) -> None:
    jobs = [(i % 3, job_inputs(request=f'{{"n": {i}}}')) for i in range(6)]
    call_ids = await setup.submit_jobs(chain_client, dev_service.owner, dev_service.service_id, jobs)
    assert call_ids == list(range(call_ids[0], call_ids[0] + 6))
    for (job_index, _), call_id in zip(jobs, call_ids, strict=True):
        assert (await chain_client.get_job_call(dev_service.service_id, call_id)).job_index == job_index


async def test_event_driven_pricing_and_registration_inputs(chain_client: ChainClient, anvil) -> None:
    """A second blueprint: per-job prices, an anvil operator that is already bonded, and the
    4-argument ``registerOperator`` overload."""
    rate = 10**15
    owner = Operator.from_private_key(DEV_KEYS[0])
    operator = Operator.from_private_key(DEV_KEYS[4])  # bonded in the snapshot, not in blueprint 0
    blueprint_id = await setup.create_blueprint(chain_client, owner, jobs=["chat", "text", "embed"],
                                                pricing=setup.PRICING_EVENT_DRIVEN)
    await setup.set_job_event_rates(chain_client, owner, blueprint_id, {0: rate, 1: rate, 2: rate})
    assert await chain_client.call(chain_client.tangle.functions.getJobEventRate(blueprint_id, 0)) == rate
    await setup.ensure_operator_bonded(chain_client, operator)
    assert await setup.register_operator(chain_client, operator, blueprint_id, "http://op4.local",
                                         registration_inputs=b"\x01\x02")
    request_id = await setup.request_service(chain_client, owner, blueprint_id, [operator.address])
    service_id = await setup.approve_service(chain_client, operator, request_id)
    assert service_id is not None

    with pytest.raises(TxRevertedError) as info:
        await setup.submit_job(chain_client, owner, service_id, 0, job_inputs())
    assert info.value.revert.name == "InvalidMsgValue"
    assert info.value.revert.args == (rate, 0)
    call_id = await setup.submit_job(chain_client, owner, service_id, 0, job_inputs(), value=rate)
    assert (await chain_client.get_job_call(service_id, call_id)).payment == rate


async def test_create_blueprint_event_and_counter_agree(chain_client: ChainClient) -> None:
    before = await chain_client.call(chain_client.tangle.functions.blueprintCount())
    blueprint_id = await setup.create_blueprint(chain_client, Account.from_key(DEV_KEYS[0]), jobs=["only"])
    assert blueprint_id == before
    assert await chain_client.call(chain_client.tangle.functions.blueprintCount()) == before + 1


def test_operator_keystore_fixture_loads_the_dev_operator(operator_keystore, dev_service) -> None:
    loaded = load_operator(operator_keystore)
    assert loaded.address == dev_service.operator.address
    env = dev_service.manager_env(keystore_uri=str(operator_keystore), data_dir="/tmp/x")
    assert env["SERVICE_ID"] == str(dev_service.service_id)
    assert env["TANGLE_CONTRACT"] == dev_service.tangle_contract


async def test_mined_failure_is_reported_as_out_of_gas(chain_client: ChainClient) -> None:
    """The simulation passes but the limit is too low: the failed receipt becomes an error."""
    owner = Account.from_key(DEV_KEYS[0])
    spec = setup.blueprint_definition(jobs=["a"], binary_sha256=b"\x01" * 32)
    with pytest.raises(TxRevertedError) as info:
        await chain_client.send(owner, chain_client.tangle.functions.createBlueprint(spec), gas=120_000)
    assert info.value.revert.name == "OutOfGas"
    assert info.value.tx_hash and info.value.tx_hash.startswith("0x")


def test_dev_keys_are_the_snapshot_accounts() -> None:
    """The roles in ../shared/tnt-core/README.md rely on these keys mapping to these accounts."""
    expected = [
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
        "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65", "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
    ]
    assert [Account.from_key(k).address for k in DEV_KEYS[:6]] == expected
