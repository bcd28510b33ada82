"""The hand decoder of job logs: both JobSubmitted layouts, the quote variant, results, bad logs."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import to_checksum_address
from hexbytes import HexBytes

from blueprint.tangle.abi import (
    JOB_RESULT_SUBMITTED_TOPIC,
    JOB_SUBMITTED_FROM_QUOTE_TOPIC,
    JOB_SUBMITTED_TOPIC,
)
from blueprint.tangle.events import (
    LogDecodeError,
    address_topic,
    decode_job_log,
    decode_result_log,
    normalize_log,
    uint_topic,
)

CALLER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
OPERATOR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
BLOCK_HASH = "0x" + "ab" * 32
TX_HASH = "0x" + "cd" * 32


def rpc_log(topics: list[str], data: bytes, **extra: object) -> dict[str, object]:
    """A log as JSON-RPC returns it (hex strings)."""
    entry: dict[str, object] = {
        "address": "0x0165878A594ca255338adfa4d48449f69242Eb8F",
        "topics": topics,
        "data": "0x" + data.hex(),
        "blockNumber": "0x102",
        "blockHash": BLOCK_HASH,
        "logIndex": "0x3",
        "transactionHash": TX_HASH,
        "removed": False,
    }
    entry.update(extra)
    return entry


def test_deployed_layout_job_index_in_data() -> None:
    data = encode(["uint8", "address", "bytes"], [2, CALLER, b"hello"])
    job = decode_job_log(rpc_log([JOB_SUBMITTED_TOPIC, uint_topic(7), uint_topic(41)], data))
    assert (job.service_id, job.call_id, job.job_index, job.inputs) == (7, 41, 2, b"hello")
    assert job.caller == CALLER
    assert (job.block_number, job.block_hash, job.log_index, job.tx_hash) == (0x102, BLOCK_HASH, 3, TX_HASH)
    assert job.from_quote is False


def test_abi_declared_layout_job_index_in_topic() -> None:
    data = encode(["address", "bytes"], [CALLER, b"\x00\x01"])
    job = decode_job_log(rpc_log([JOB_SUBMITTED_TOPIC, uint_topic(7), uint_topic(42), uint_topic(1)], data))
    assert (job.service_id, job.call_id, job.job_index, job.inputs) == (7, 42, 1, b"\x00\x01")


def test_web3_shaped_log_with_hexbytes() -> None:
    data = encode(["uint8", "address", "bytes"], [0, CALLER, b"x" * 100])
    entry = {
        "address": "0x0165878A594ca255338adfa4d48449f69242Eb8F",
        "topics": [HexBytes(JOB_SUBMITTED_TOPIC), HexBytes(uint_topic(3)), HexBytes(uint_topic(9))],
        "data": HexBytes(data),
        "blockNumber": 300,
        "blockHash": HexBytes(BLOCK_HASH),
        "logIndex": 0,
        "transactionHash": HexBytes(TX_HASH),
    }
    job = decode_job_log(entry)
    assert (job.service_id, job.call_id, job.inputs, job.block_number) == (3, 9, b"x" * 100, 300)


def test_from_quote_both_layouts() -> None:
    quoted = [OPERATOR]
    data3 = encode(["uint8", "address", "address[]", "uint256", "bytes"], [1, CALLER, quoted, 10**18, b"q"])
    job = decode_job_log(rpc_log([JOB_SUBMITTED_FROM_QUOTE_TOPIC, uint_topic(5), uint_topic(6)], data3))
    assert (job.job_index, job.inputs, job.from_quote) == (1, b"q", True)
    assert job.quoted_operators == (to_checksum_address(OPERATOR),)  # only they may answer
    data4 = encode(["address", "address[]", "uint256", "bytes"], [CALLER, quoted, 5, b"r"])
    job = decode_job_log(
        rpc_log([JOB_SUBMITTED_FROM_QUOTE_TOPIC, uint_topic(5), uint_topic(6), uint_topic(2)], data4)
    )
    assert (job.job_index, job.inputs, job.from_quote) == (2, b"r", True)
    assert job.quoted_operators == (to_checksum_address(OPERATOR),)


@pytest.mark.parametrize(
    ("topics", "data", "match"),
    [
        ([], b"", "no topics"),
        (["0x" + "11" * 32, uint_topic(1), uint_topic(2)], b"", "not a job log"),
        ([JOB_SUBMITTED_TOPIC, uint_topic(1)], b"", "2 topics"),
        ([JOB_SUBMITTED_TOPIC, uint_topic(1), uint_topic(2)], b"\x01\x02", "does not decode"),
        ([JOB_SUBMITTED_TOPIC, uint_topic(1), uint_topic(2)],
         encode(["uint256", "address", "bytes"], [256, CALLER, b""]), "does not decode"),
        ([JOB_SUBMITTED_TOPIC, "0x" + "ff" * 32, uint_topic(2)],
         encode(["uint8", "address", "bytes"], [0, CALLER, b""]), "serviceId"),
        ([JOB_SUBMITTED_TOPIC, uint_topic(1), uint_topic(2), uint_topic(999)],
         encode(["address", "bytes"], [CALLER, b""]), "jobIndex"),
        # deployed layout's data under a 4-topic log: the offsets are garbage
        ([JOB_SUBMITTED_TOPIC, uint_topic(1), uint_topic(2), uint_topic(0)],
         encode(["uint8", "address", "bytes"], [0, CALLER, b"abc"]), "does not decode"),
    ],
)
def test_malformed_logs_raise_a_clear_error(topics: list[str], data: bytes, match: str) -> None:
    with pytest.raises(LogDecodeError, match=match):
        decode_job_log(rpc_log(topics, data))


def test_missing_field_and_bad_hex() -> None:
    entry = rpc_log([JOB_SUBMITTED_TOPIC, uint_topic(1), uint_topic(2)], b"")
    del entry["blockHash"]
    with pytest.raises(LogDecodeError, match="lacks a field"):
        normalize_log(entry)
    entry = rpc_log([JOB_SUBMITTED_TOPIC, uint_topic(1), uint_topic(2)], b"")
    entry["data"] = "0xzz"
    with pytest.raises(LogDecodeError, match="not hex"):
        normalize_log(entry)


def test_removed_flag_is_kept() -> None:
    data = encode(["uint8", "address", "bytes"], [0, CALLER, b""])
    raw = normalize_log(rpc_log([JOB_SUBMITTED_TOPIC, uint_topic(1), uint_topic(2)], data, removed=True))
    assert raw.removed is True


def test_result_log() -> None:
    topics = [JOB_RESULT_SUBMITTED_TOPIC, uint_topic(4), uint_topic(8), address_topic(OPERATOR)]
    result = decode_result_log(rpc_log(topics, encode(["bytes"], [b"answer"])))
    assert (result.service_id, result.call_id, result.operator, result.output) == (4, 8, OPERATOR, b"answer")
    with pytest.raises(LogDecodeError):
        decode_result_log(rpc_log(topics[:3], encode(["bytes"], [b"answer"])))
    with pytest.raises(LogDecodeError, match="not an address"):
        decode_result_log(rpc_log([*topics[:3], "0x" + "ff" * 32], encode(["bytes"], [b""])))
