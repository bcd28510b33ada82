"""The carried ABI fragments, topics and revert decoding."""

from __future__ import annotations

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak
from web3.exceptions import ContractCustomError, ContractLogicError

from blueprint.devnet_data import carried_abi
from blueprint.tangle import abi


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "internalType"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _upstream(name: str) -> list[dict]:
    """The upstream ABI the package carries (``blueprint/devnet_data``, checked by sha256)."""
    return _strip(carried_abi(name.removesuffix(".json")))


def test_tangle_fragments_match_the_upstream_interface_exactly() -> None:
    upstream = _upstream("ITangleFull.json")
    for ours in abi.TANGLE_ABI:
        same_name = [u for u in upstream if u.get("name") == ours["name"] and u["type"] == ours["type"]]
        if ours["name"] == "JobSubmitted":
            (theirs,) = same_name
            assert theirs["inputs"][2]["indexed"] is True  # the shipped ABI's known mismatch
            assert ours["inputs"][2] == {"name": "jobIndex", "type": "uint8", "indexed": False}
            assert abi.signature(ours) == abi.signature(theirs)
            continue
        assert ours in same_name, ours["name"]


@pytest.mark.parametrize(("ours", "file"), [
    (abi.STAKING_ABI, "IMultiAssetDelegation.json"),
    (abi.STATUS_REGISTRY_ABI, "OperatorStatusRegistry.json"),
])
def test_other_fragments_match_upstream(ours: list[dict], file: str) -> None:
    upstream = _upstream(file)
    for fragment in ours:
        assert fragment in upstream, fragment["name"]


def test_the_package_carries_what_it_calls() -> None:
    names = {f["name"] for f in abi.TANGLE_ABI}
    for needed in ("submitJob", "submitJobFromQuote", "submitResult", "submitResults", "getJobCall",
                   "createBlueprint", "registerOperator", "requestService", "approveService", "getService",
                   "getServiceOperators", "setJobEventRates", "addPermittedCaller", "blueprintCount",
                   "serviceCount", "JobSubmitted", "JobSubmittedFromQuote", "JobResultSubmitted",
                   "JobCompleted", "ServiceActivated", "ServiceRequested", "BlueprintCreated",
                   "OperatorRegistered"):
        assert needed in names, needed
    overloads = {abi.signature(f) for f in abi.TANGLE_ABI if f["name"] == "registerOperator"}
    assert overloads == {
        "registerOperator(uint64,bytes,string)", "registerOperator(uint64,bytes,string,bytes)"
    }
    staking = {f["name"] for f in abi.STAKING_ABI}
    assert {"registerOperator", "registerOperatorWithAsset", "minOperatorStake",
            "operatorBondToken"} <= staking
    assert {"submitHeartbeat", "submitHeartbeatDirect"} <= {f["name"] for f in abi.STATUS_REGISTRY_ABI}
    assert {"approve", "balanceOf"} <= {f["name"] for f in abi.ERC20_ABI}


def test_topic_constants_are_the_event_hashes() -> None:
    expected = {
        "JobSubmitted": "JobSubmitted(uint64,uint64,uint8,address,bytes)",
        "JobSubmittedFromQuote": "JobSubmittedFromQuote(uint64,uint64,uint8,address,address[],uint256,bytes)",
        "JobResultSubmitted": "JobResultSubmitted(uint64,uint64,address,bytes)",
        "JobCompleted": "JobCompleted(uint64,uint64)",
        "ServiceActivated": "ServiceActivated(uint64,uint64,uint64,uint8)",
    }
    for name, sig in expected.items():
        assert abi.signature(abi.fragment(abi.TANGLE_ABI, name, "event")) == sig
    assert abi.JOB_SUBMITTED_TOPIC == "0x" + keccak(text=expected["JobSubmitted"]).hex()
    assert abi.JOB_SUBMITTED_FROM_QUOTE_TOPIC == "0x" + keccak(text=expected["JobSubmittedFromQuote"]).hex()
    assert abi.JOB_RESULT_SUBMITTED_TOPIC == "0x" + keccak(text=expected["JobResultSubmitted"]).hex()
    constants = {
        "JobCompleted": abi.JOB_COMPLETED_TOPIC, "ServiceActivated": abi.SERVICE_ACTIVATED_TOPIC,
        "ServiceRequested": abi.SERVICE_REQUESTED_TOPIC, "BlueprintCreated": abi.BLUEPRINT_CREATED_TOPIC,
        "OperatorRegistered": abi.OPERATOR_REGISTERED_TOPIC,
    }
    for name, topic in constants.items():
        assert topic == abi.event_topic(abi.fragment(abi.TANGLE_ABI, name, "event"))
    heartbeat = abi.fragment(abi.STATUS_REGISTRY_ABI, "HeartbeatReceived", "event")
    assert abi.HEARTBEAT_RECEIVED_TOPIC == abi.event_topic(heartbeat)


def test_errors_table_is_package_data_and_matches_upstream() -> None:
    errors = abi.errors_abi()
    assert len(errors) >= 400 and all(e["type"] == "error" for e in errors)
    upstream = [e for e in _upstream("TangleErrors.json") if e["type"] == "error"]
    assert {abi.signature(e) for e in errors} == {abi.signature(e) for e in upstream}


def _error_data(sig: str, types: list[str], values: list) -> bytes:
    return keccak(text=sig)[:4] + abi_encode(types, values)


def test_decode_custom_errors() -> None:
    data = _error_data("ResultAlreadySubmitted(uint64,uint64,address)", ["uint64", "uint64", "address"],
                       [3, 9, "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"])
    decoded = abi.decode_revert(data)
    assert decoded.name == "ResultAlreadySubmitted"
    assert decoded.args == (3, 9, "0x70997970c51812dc3a010c7d01b50e0d17dc79c8")
    assert decoded.known
    assert abi.decode_revert("0x" + data.hex()) == decoded
    assert str(abi.decode_revert(_error_data("InvalidMsgValue(uint256,uint256)", ["uint256", "uint256"],
                                             [5, 0]))) == "InvalidMsgValue(5, 0)"


def test_decode_error_string_and_panic() -> None:
    message = abi.decode_revert(_error_data("Error(string)", ["string"], ["not allowed"]))
    assert (message.name, message.args) == ("Error", ("not allowed",))
    panic = abi.decode_revert(_error_data("Panic(uint256)", ["uint256"], [0x11]))
    assert (panic.name, panic.args) == ("Panic", (0x11,))


def test_decode_overloaded_error_names() -> None:
    """Several errors share a name with different arguments; each decodes by its own selector."""
    errors = abi.errors_abi()
    by_name: dict[str, list[dict]] = {}
    for item in errors:
        by_name.setdefault(item["name"], []).append(item)
    overloaded = [items for items in by_name.values() if len(items) > 1]
    assert overloaded
    for items in overloaded:
        for item in items:
            types = [abi.canonical_type(p) for p in item["inputs"]]
            if any("(" in t or "[" in t for t in types):
                continue
            data = abi.selector(item) + abi_encode(types, [_sample(t) for t in types])
            assert abi.decode_revert(data).name == item["name"]


def _sample(kind: str):
    if kind == "address":
        return "0x" + "11" * 20
    if kind == "bool":
        return True
    if kind == "string":
        return "x"
    if kind.startswith("bytes") and kind != "bytes":
        return b"\x01" * int(kind[5:])
    if kind == "bytes":
        return b"\x01"
    return 1


@pytest.mark.parametrize(("data", "name"), [
    (None, "EmptyRevert"),
    (b"", "EmptyRevert"),
    ("0x", "EmptyRevert"),
    (b"\x01\x02", "UnknownError"),
    ("0xzz", "UnknownError"),
    (bytes.fromhex("deadbeef") + b"\x00" * 32, "UnknownError"),
    (keccak(text="JobAlreadyCompleted(uint64,uint64)")[:4] + b"\x00" * 5, "UnknownError"),  # truncated
    (keccak(text="Error(string)")[:4] + b"\xff" * 3, "UnknownError"),
])
def test_decode_never_raises(data, name: str) -> None:
    decoded = abi.decode_revert(data)
    assert decoded.name == name
    assert not decoded.known


def test_revert_data_from_web3_exceptions() -> None:
    data = _error_data("NotPermittedCaller(uint64,address)", ["uint64", "address"], [0, "0x" + "22" * 20])
    custom = ContractCustomError("0x" + data.hex(), data="0x" + data.hex())
    assert abi.revert_data_of(custom) == data
    assert abi.decode_revert(abi.revert_data_of(custom)).name == "NotPermittedCaller"
    logic = ContractLogicError("execution reverted", data={"message": "reverted", "data": "0x" + data.hex()})
    assert abi.revert_data_of(logic) == data
    assert abi.revert_data_of(ValueError("nothing here")) is None
