"""Hand decoding of the TNT Core job logs the operator follows.

Why by hand: the deployed ``JobSubmitted`` emits ``jobIndex`` in the data (3 topics), while the
shipped ABI declares it indexed (4 topics), so web3's ABI decoder rejects real logs. We read the
topics ourselves and accept both layouts. A log that decodes in neither raises
:class:`LogDecodeError`; the producer records it and goes on.

Logs may come from web3 (``AttributeDict`` with ``HexBytes``) or raw JSON-RPC (hex strings):
:func:`normalize_log` turns either into plain Python values once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import to_checksum_address

from blueprint.errors import BlueprintError
from blueprint.tangle.abi import (
    JOB_RESULT_SUBMITTED_DATA_TYPES,
    JOB_RESULT_SUBMITTED_TOPIC,
    JOB_SUBMITTED_DATA_TYPES,
    JOB_SUBMITTED_FROM_QUOTE_DATA_TYPES,
    JOB_SUBMITTED_FROM_QUOTE_TOPIC,
    JOB_SUBMITTED_INDEXED_DATA_TYPES,
    JOB_SUBMITTED_TOPIC,
)
from blueprint.tangle.types import JobCall

#: topic0 values the producer subscribes to.
JOB_TOPICS: tuple[str, str] = (JOB_SUBMITTED_TOPIC, JOB_SUBMITTED_FROM_QUOTE_TOPIC)
_UINT64_MAX = 2**64 - 1
_UINT8_MAX = 255


class LogDecodeError(BlueprintError):
    """A log that claims to be a job event but does not decode (wrong topics or data)."""

    code = "log_decode_error"


@dataclass(frozen=True, slots=True)
class RawLog:
    """A log with plain values: hex strings lowercased, ints as ints, data as bytes."""

    address: str
    topics: tuple[str, ...]
    data: bytes
    block_number: int
    block_hash: str
    log_index: int
    tx_hash: str
    removed: bool = False


def _hex(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, str):
        text = value.lower()
        return text if text.startswith("0x") else "0x" + text
    raise LogDecodeError(f"expected hex bytes, got {type(value).__name__}")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise LogDecodeError("expected an integer, got a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16) if value.lower().startswith("0x") else int(value)
        except ValueError as exc:
            raise LogDecodeError(f"bad integer {value!r}") from exc
    raise LogDecodeError(f"expected an integer, got {type(value).__name__}")


def _bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        text = value[2:] if value.lower().startswith("0x") else value
        try:
            return bytes.fromhex(text)
        except ValueError as exc:
            raise LogDecodeError("log data is not hex") from exc
    raise LogDecodeError(f"expected bytes, got {type(value).__name__}")


def normalize_log(log: Mapping[str, Any]) -> RawLog:
    """A web3 or JSON-RPC log as a :class:`RawLog`; LogDecodeError if a field is missing."""
    try:
        return RawLog(
            address=_hex(log["address"]),
            topics=tuple(_hex(t) for t in log["topics"]),
            data=_bytes(log.get("data") or b""),
            block_number=_int(log["blockNumber"]),
            block_hash=_hex(log["blockHash"]),
            log_index=_int(log["logIndex"]),
            tx_hash=_hex(log["transactionHash"]),
            removed=bool(log.get("removed", False)),
        )
    except (KeyError, TypeError) as exc:
        raise LogDecodeError(f"log lacks a field: {exc}") from exc


def _topic_uint(topic: str, bound: int, what: str) -> int:
    value = int(topic, 16)
    if value > bound:
        raise LogDecodeError(f"{what} in topic out of range: {topic}")
    return value


def _decode(types: tuple[str, ...], data: bytes, what: str) -> tuple[Any, ...]:
    try:
        return tuple(abi_decode(list(types), data))
    except (DecodingError, ValueError, OverflowError, TypeError) as exc:
        detail = str(exc)[:160]
        raise LogDecodeError(f"{what}: data does not decode as ({', '.join(types)}): {detail}") from exc


def decode_job_log(log: Mapping[str, Any] | RawLog) -> JobCall:
    """A ``JobSubmitted`` or ``JobSubmittedFromQuote`` log as a :class:`JobCall`.

    Layouts accepted: 3 topics ``[sig, serviceId, callId]`` with ``jobIndex`` first in the data
    (what the contract emits), or 4 topics with ``jobIndex`` in topic 3 (the shipped ABI).
    """
    raw = log if isinstance(log, RawLog) else normalize_log(log)
    if not raw.topics:
        raise LogDecodeError("log has no topics")
    sig = raw.topics[0]
    if sig not in JOB_TOPICS:
        raise LogDecodeError(f"not a job log: topic0 {sig}")
    from_quote = sig == JOB_SUBMITTED_FROM_QUOTE_TOPIC
    what = "JobSubmittedFromQuote" if from_quote else "JobSubmitted"
    if len(raw.topics) not in (3, 4):
        raise LogDecodeError(f"{what} with {len(raw.topics)} topics (expected 3 or 4)")
    service_id = _topic_uint(raw.topics[1], _UINT64_MAX, "serviceId")
    call_id = _topic_uint(raw.topics[2], _UINT64_MAX, "callId")
    if len(raw.topics) == 3:
        types = JOB_SUBMITTED_FROM_QUOTE_DATA_TYPES if from_quote else JOB_SUBMITTED_DATA_TYPES
        values = _decode(types, raw.data, what)
        job_index, caller, inputs = values[0], values[1], values[-1]
        quoted = values[2] if from_quote else ()
        if job_index > _UINT8_MAX:
            raise LogDecodeError(f"{what}: jobIndex {job_index} out of range")
    else:
        job_index = _topic_uint(raw.topics[3], _UINT8_MAX, "jobIndex")
        types = JOB_SUBMITTED_FROM_QUOTE_DATA_TYPES[1:] if from_quote else JOB_SUBMITTED_INDEXED_DATA_TYPES
        values = _decode(types, raw.data, what)
        caller, inputs = values[0], values[-1]
        quoted = values[1] if from_quote else ()
    return JobCall(
        service_id=service_id,
        call_id=call_id,
        job_index=int(job_index),
        caller=to_checksum_address(caller),
        inputs=bytes(inputs),
        block_number=raw.block_number,
        block_hash=raw.block_hash,
        log_index=raw.log_index,
        tx_hash=raw.tx_hash,
        from_quote=from_quote,
        quoted_operators=tuple(to_checksum_address(op) for op in quoted),
    )


@dataclass(frozen=True, slots=True)
class JobResultLog:
    """A ``JobResultSubmitted`` log: who answered which call, with what output."""

    service_id: int
    call_id: int
    operator: str
    output: bytes
    block_number: int
    block_hash: str
    tx_hash: str


def decode_result_log(log: Mapping[str, Any] | RawLog) -> JobResultLog:
    """A ``JobResultSubmitted(serviceId, callId, operator indexed; bytes output)`` log."""
    raw = log if isinstance(log, RawLog) else normalize_log(log)
    if not raw.topics or raw.topics[0] != JOB_RESULT_SUBMITTED_TOPIC:
        raise LogDecodeError("not a JobResultSubmitted log")
    if len(raw.topics) != 4:
        raise LogDecodeError(f"JobResultSubmitted with {len(raw.topics)} topics (expected 4)")
    operator_word = int(raw.topics[3], 16)
    if operator_word >> 160:
        raise LogDecodeError("JobResultSubmitted: operator topic is not an address")
    (output,) = _decode(JOB_RESULT_SUBMITTED_DATA_TYPES, raw.data, "JobResultSubmitted")
    return JobResultLog(
        service_id=_topic_uint(raw.topics[1], _UINT64_MAX, "serviceId"),
        call_id=_topic_uint(raw.topics[2], _UINT64_MAX, "callId"),
        operator=to_checksum_address(operator_word.to_bytes(20, "big")),
        output=bytes(output),
        block_number=raw.block_number,
        block_hash=raw.block_hash,
        tx_hash=raw.tx_hash,
    )


def uint_topic(value: int) -> str:
    """A uint as a 32-byte topic, for log filters (``serviceId`` in topic 1)."""
    return "0x" + value.to_bytes(32, "big").hex()


def address_topic(address: str) -> str:
    """An address as a 32-byte topic, for log filters (``operator`` in topic 3); a string that
    is not an address raises ValueError instead of filtering for nothing."""
    return "0x" + "00" * 12 + to_checksum_address(address)[2:].lower()
