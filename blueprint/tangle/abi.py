"""The ABI fragments this package calls on TNT Core (Tangle v2), and revert decoding.

The fragments are package data, JSON files under ``abis/`` read once at import
(``tangle.json``, ``staking.json``, ``status_registry.json``, ``erc20.json``), written from the
contracts' interfaces (``ITangleFull``, ``IMultiAssetDelegation``, ``OperatorStatusRegistry``;
tnt-core-bindings 0.19.1) so that the package never needs the upstream
ABI files at runtime. Only what the operator, the dev stack and the client tools call is here.

One deliberate difference from the shipped ABI: ``JobSubmitted`` is declared with ``jobIndex``
**not** indexed, which is what the deployed contract emits (3 topics). The shipped ABI marks it
indexed and web3's decoder then rejects real logs; the topic hash is the same either way, so
decoders should read topics by hand and accept both layouts.

Custom errors for revert decoding live in ``abis/errors.json`` beside this module (package data,
from tnt-core's ``TangleErrors.json``): see :func:`decode_revert`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import keccak


def _load(name: str) -> list[dict[str, Any]]:
    """One ABI file of the package data (``abis/``), read once at import."""
    text = resources.files(__package__).joinpath("abis", name).read_text(encoding="utf-8")
    return json.loads(text)


#: The Tangle core contract (ITangleFull): the functions and events the package uses.
TANGLE_ABI: list[dict[str, Any]] = _load("tangle.json")
#: The MultiAssetDelegation (staking) proxy.
STAKING_ABI: list[dict[str, Any]] = _load("staking.json")
#: The OperatorStatusRegistry (heartbeats).
STATUS_REGISTRY_ABI: list[dict[str, Any]] = _load("status_registry.json")
#: ERC20 fragments (the TNT token is the operator bond token).
ERC20_ABI: list[dict[str, Any]] = _load("erc20.json")

#: topic0 of each event: keccak256 of its canonical signature (shown beside it).
# JobSubmitted(uint64,uint64,uint8,address,bytes)
JOB_SUBMITTED_TOPIC = "0xde37cc48d21778e1c9a075c4e41c5aff6918c3ea6151221f0af3ce8121a29db5"
# JobSubmittedFromQuote(uint64,uint64,uint8,address,address[],uint256,bytes)
JOB_SUBMITTED_FROM_QUOTE_TOPIC = "0xb707259a8a1604adca251fecf84eb283329cd45175690dcb8ff1cf52a6252422"
# JobResultSubmitted(uint64,uint64,address,bytes)
JOB_RESULT_SUBMITTED_TOPIC = "0x8a04f99fe23284e874e8dd017345248279cc59701695e73bcdbeb6241bcd2ac6"
# JobCompleted(uint64,uint64)
JOB_COMPLETED_TOPIC = "0x60a7649f6e93e7a3ce1dc9729c20e3d95dce28c6a6bd957cde09d8a1cb37c19f"
# ServiceRequested(uint64,uint64,address,uint8)
SERVICE_REQUESTED_TOPIC = "0x5c92301c22df4cc7209a8b0b25b2f5787750237e110e09a276a9f7d16e6709a4"
# ServiceApproved(uint64,address)
SERVICE_APPROVED_TOPIC = "0xceda1a44ead4da3d3abaaa941afa6d9530fd84dd8e99385c9183d986dcab980f"
# ServiceActivated(uint64,uint64,uint64,uint8)
SERVICE_ACTIVATED_TOPIC = "0x0325bb1c453505f13d5546dda087be5e237f7cf249f79a0ee406d97ef0ca7ee9"
# ServiceTerminated(uint64)
SERVICE_TERMINATED_TOPIC = "0x3fd558a59bbce1d996d17eab7fde314bcd201ec3f17375a7f873b3162927e881"
# BlueprintCreated(uint64,address,address,string,bytes32)
BLUEPRINT_CREATED_TOPIC = "0x7ccd26bc6775ae4936200d467efc9a0e4e5f2fa8877e86faa1c7a1453a93a7fc"
# OperatorRegistered(uint64,address,bytes,string)
OPERATOR_REGISTERED_TOPIC = "0x0455541bf5feb5fcc32e827dc18bf2175448427c6ae72c8d5e985c99e4104102"
# OperatorUnregistered(uint64,address)
OPERATOR_UNREGISTERED_TOPIC = "0x88e46e95bcdf1020c0caf9f3dd5fde69c41d2151dbbca0a77c03c4e28b4d3ec1"
# OperatorPreferencesUpdated(uint64,address,bytes,string)
OPERATOR_PREFERENCES_UPDATED_TOPIC = "0xbaca468a52670b77d74d0423b33ac5227a7f1a5c548e07006b29c6e2289779a6"
# HeartbeatReceived(uint64,uint64,address,uint8,uint256)
HEARTBEAT_RECEIVED_TOPIC = "0x658918e3147f13dd068ec21437b4c25c21682a8dc2129348671ead000db3e7b9"
# OperatorRegistered(address,uint256)
STAKING_OPERATOR_REGISTERED_TOPIC = "0xbc11617e575d658c74e921c8df22f8e48566072fa78145a6cfe18420bf8d0c4e"


#: The data part of a deployed ``JobSubmitted`` log (topics: topic0, serviceId, callId).
JOB_SUBMITTED_DATA_TYPES: tuple[str, ...] = ("uint8", "address", "bytes")
#: The data part of a ``JobSubmitted`` log in the shipped-ABI layout (jobIndex in topic 3).
JOB_SUBMITTED_INDEXED_DATA_TYPES: tuple[str, ...] = ("address", "bytes")
#: The data part of a ``JobSubmittedFromQuote`` log (topics: topic0, serviceId, callId).
JOB_SUBMITTED_FROM_QUOTE_DATA_TYPES: tuple[str, ...] = ("uint8", "address", "address[]", "uint256", "bytes")
#: The data part of a ``JobResultSubmitted`` log (topics: topic0, serviceId, callId, operator).
JOB_RESULT_SUBMITTED_DATA_TYPES: tuple[str, ...] = ("bytes",)


def canonical_type(param: dict[str, Any]) -> str:
    """The canonical ABI type of one parameter, with tuples spelled out (``(uint8,address)[]``)."""
    kind = param["type"]
    if kind.startswith("tuple"):
        inner = ",".join(canonical_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple'):]}"
    return kind


def signature(fragment: dict[str, Any]) -> str:
    """``name(type,...)`` of a function, event or error fragment."""
    return f"{fragment['name']}({','.join(canonical_type(p) for p in fragment.get('inputs', []))})"


def event_topic(fragment: dict[str, Any]) -> str:
    """topic0 of an event fragment, ``0x``-prefixed lowercase hex."""
    return "0x" + keccak(text=signature(fragment)).hex()


def selector(fragment: dict[str, Any]) -> bytes:
    """The 4-byte selector of a function or error fragment."""
    return keccak(text=signature(fragment))[:4]


def fragment(abi: list[dict[str, Any]], name: str, kind: str | None = None) -> dict[str, Any]:
    """The first fragment named ``name`` (of ``kind`` if given); KeyError when absent."""
    for item in abi:
        if item.get("name") == name and (kind is None or item["type"] == kind):
            return item
    raise KeyError(f"{name} not in ABI")


# --- revert decoding --------------------------------------------------------------------------

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)


@dataclass(frozen=True, slots=True)
class DecodedRevert:
    """A revert reason: a custom error's name and arguments, ``Error``/``Panic``, or unknown.

    ``name`` is ``"Error"`` for ``require`` messages, ``"Panic"`` for assertion/arith failures,
    ``"EmptyRevert"`` when the contract gave no data, and ``"UnknownError"`` when the selector is
    not one we know (``args`` then holds the selector in hex).
    """

    name: str
    args: tuple[Any, ...] = ()
    data: bytes = field(default=b"", repr=False)

    @property
    def known(self) -> bool:
        return self.name not in ("UnknownError", "EmptyRevert")

    def __str__(self) -> str:
        shown = ", ".join(_show(a) for a in self.args)
        return f"{self.name}({shown})"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


@cache
def errors_abi() -> list[dict[str, Any]]:
    """The custom errors of TNT Core and OpenZeppelin v5 (package data ``abis/errors.json``)."""
    return _load("errors.json")


@cache
def _errors_by_selector() -> dict[bytes, list[dict[str, Any]]]:
    table: dict[bytes, list[dict[str, Any]]] = {}
    for item in errors_abi():
        table.setdefault(selector(item), []).append(item)
    return table


def decode_revert(data: bytes | str | None) -> DecodedRevert:
    """Decode revert data (bytes or ``0x`` hex) into the error's name and arguments.

    Never raises: data that does not decode is reported as ``UnknownError`` with its selector.
    """
    if data is None:
        raw = b""
    elif isinstance(data, str):
        text = data[2:] if data.startswith(("0x", "0X")) else data
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            return DecodedRevert("UnknownError", (data,), b"")
    else:
        raw = bytes(data)
    if len(raw) < 4:
        return DecodedRevert("EmptyRevert", (), raw) if not raw else DecodedRevert(
            "UnknownError", ("0x" + raw.hex(),), raw
        )
    head, body = raw[:4], raw[4:]
    if head == ERROR_STRING_SELECTOR:
        try:
            return DecodedRevert("Error", tuple(abi_decode(["string"], body)), raw)
        except (DecodingError, ValueError, OverflowError):
            pass
    elif head == PANIC_SELECTOR:
        try:
            return DecodedRevert("Panic", tuple(abi_decode(["uint256"], body)), raw)
        except (DecodingError, ValueError, OverflowError):
            pass
    for item in _errors_by_selector().get(head, []):
        types = [canonical_type(p) for p in item.get("inputs", [])]
        try:
            return DecodedRevert(item["name"], tuple(abi_decode(types, body)), raw)
        except (DecodingError, ValueError, OverflowError):
            continue
    return DecodedRevert("UnknownError", ("0x" + head.hex(),), raw)


def revert_data_of(exc: BaseException) -> bytes | None:
    """The raw revert data a web3 exception carries, if any.

    web3 7/8 put it on ``ContractCustomError.data`` / ``ContractLogicError.data`` (hex string), and
    some providers only in the JSON-RPC error dict in ``args``; this looks in each place.
    """
    candidates: list[Any] = [getattr(exc, "data", None)]
    candidates += [a for a in getattr(exc, "args", ()) if isinstance(a, (str, dict))]
    for item in candidates:
        if isinstance(item, dict):
            item = item.get("data")
            if isinstance(item, dict):
                item = item.get("data")
        if isinstance(item, (bytes, bytearray)):
            return bytes(item)
        if isinstance(item, str) and item.startswith("0x"):
            try:
                return bytes.fromhex(item[2:])
            except ValueError:
                continue
    return None
