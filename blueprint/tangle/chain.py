"""A small async client for the TNT Core contracts over web3.py's ``AsyncWeb3`` (HTTP).

It exists so that set-up code, tools and tests share one way to build the contract objects from
:mod:`blueprint.tangle.abi` and one way to send a transaction: simulate with ``eth_call`` first
(a revert is raised at once, decoded with the custom-error table), give generous gas headroom
(``eth_estimateGas`` can settle on a limit where a best-effort manager hook silently runs out of
gas), sign locally, wait for the receipt, and turn a failed receipt into a decoded error.

The daemon's high-rate result path has its own transaction manager (one nonce sequence, fee bumps);
this client is for one-off operations from any account.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContract, AsyncContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError

from blueprint.errors import BlueprintError
from blueprint.tangle import abi
from blueprint.tangle.abi import DecodedRevert, decode_revert, revert_data_of
from blueprint.tangle.rpc import PooledHTTPProvider, lean_web3

log = structlog.get_logger(__name__)

#: Default multiplier and floor added on top of ``eth_estimateGas``.
GAS_MULTIPLIER = 1.5
GAS_HEADROOM = 300_000


class ChainError(BlueprintError):
    """The chain could not be reached or did not do what we asked."""

    http_status = 502
    code = "chain_error"
    retryable = True


class TransactionReverted(ChainError):
    """A call or transaction reverted; ``revert`` holds the decoded custom error."""

    code = "transaction_reverted"
    retryable = False

    def __init__(self, what: str, revert: DecodedRevert, *, tx_hash: str | None = None) -> None:
        where = f" (tx {tx_hash})" if tx_hash else ""
        super().__init__(f"{what} reverted: {revert}{where}")
        self.what = what
        self.revert = revert
        self.tx_hash = tx_hash


@dataclass(frozen=True, slots=True)
class OnchainJobCall:
    """``Tangle.getJobCall``: what the chain keeps about one job (the inputs are not kept)."""

    job_index: int
    caller: str
    created_at: int
    result_count: int
    completed: bool
    is_rfq: bool
    payment: int

    @property
    def exists(self) -> bool:
        """A job that was never submitted reads back as all zeros."""
        return self.created_at != 0


@dataclass(frozen=True, slots=True)
class ResultLog:
    """One ``JobResultSubmitted`` log."""

    service_id: int
    call_id: int
    operator: str
    output: bytes
    block_number: int
    tx_hash: str


def uint_topic(value: int) -> str:
    """A uint as a 32-byte topic (``0x`` hex)."""
    return "0x" + value.to_bytes(32, "big").hex()


def address_topic(address: str) -> str:
    """An address as a 32-byte topic (``0x`` hex, lowercase)."""
    return "0x" + "00" * 12 + to_checksum_address(address)[2:].lower()


def _hex(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    return str(value).lower()


def logs_with_topic(receipt: Mapping[str, Any], topic0: str, address: str | None = None) -> list[Any]:
    """The logs of a receipt whose topic0 (and emitter, if given) match."""
    wanted = address.lower() if address else None
    found = []
    for entry in receipt["logs"]:
        topics = entry["topics"]
        if not topics or _hex(topics[0]) != topic0.lower():
            continue
        if wanted and str(entry["address"]).lower() != wanted:
            continue
        found.append(entry)
    return found


class ChainClient:
    """Contract objects for Tangle, staking and the status registry, plus transaction helpers."""

    def __init__(
        self,
        w3: AsyncWeb3,
        *,
        tangle_address: str,
        staking_address: str,
        status_registry_address: str,
        receipt_timeout: float = 60.0,
        poll_latency: float = 0.05,
    ) -> None:
        """``receipt_timeout``: seconds to wait for each receipt; ``poll_latency``: receipt poll
        interval (anvil automines, so short polls keep set-up fast)."""
        self.w3 = w3
        self.tangle_address = to_checksum_address(tangle_address)
        self.staking_address = to_checksum_address(staking_address)
        self.status_registry_address = to_checksum_address(status_registry_address)
        self.tangle: AsyncContract = w3.eth.contract(address=self.tangle_address, abi=abi.TANGLE_ABI)
        self.staking: AsyncContract = w3.eth.contract(address=self.staking_address, abi=abi.STAKING_ABI)
        self.status_registry: AsyncContract = w3.eth.contract(
            address=self.status_registry_address, abi=abi.STATUS_REGISTRY_ABI
        )
        self.receipt_timeout = receipt_timeout
        self.poll_latency = poll_latency

    @classmethod
    def connect(
        cls,
        http_rpc_url: str,
        *,
        tangle_address: str,
        staking_address: str,
        status_registry_address: str,
        request_timeout: float = 30.0,
        **kwargs: Any,
    ) -> ChainClient:
        """A client over a pooled keep-alive HTTP provider; call :meth:`close` when done."""
        provider = PooledHTTPProvider(http_rpc_url, request_kwargs={"timeout": request_timeout})
        return cls(
            lean_web3(provider),
            tangle_address=tangle_address,
            staking_address=staking_address,
            status_registry_address=status_registry_address,
            **kwargs,
        )

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> ChainClient:
        """A client from the blueprint manager's settings (``http_rpc_url``, ``*_contract``)."""
        return cls.connect(
            settings.http_rpc_url,
            tangle_address=settings.tangle_contract,
            staking_address=settings.staking_contract,
            status_registry_address=settings.status_registry_contract,
            **kwargs,
        )

    async def close(self) -> None:
        """Close the provider's HTTP session."""
        disconnect = getattr(self.w3.provider, "disconnect", None)
        if disconnect is not None:
            await disconnect()

    async def __aenter__(self) -> ChainClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def erc20(self, address: str) -> AsyncContract:
        """An ERC20 contract object (approve, allowance, balanceOf, transfer, decimals)."""
        return self.w3.eth.contract(address=to_checksum_address(address), abi=abi.ERC20_ABI)

    # --- reads ------------------------------------------------------------------------------

    async def call(self, fn: AsyncContractFunction, *, sender: str | None = None,
                   block: int | str = "latest") -> Any:
        """A view call; a revert raises :class:`TransactionReverted` with the decoded error."""
        tx: dict[str, Any] = {"from": to_checksum_address(sender)} if sender else {}
        try:
            return await fn.call(tx, block_identifier=block)
        except (ContractLogicError, Web3RPCError) as exc:
            raise _reverted(fn.fn_name, exc) from None

    async def get_job_call(self, service_id: int, call_id: int) -> OnchainJobCall:
        """``getJobCall(serviceId, callId)``."""
        raw = await self.call(self.tangle.functions.getJobCall(service_id, call_id))
        return OnchainJobCall(
            job_index=raw[0], caller=raw[1], created_at=raw[2], result_count=raw[3],
            completed=raw[4], is_rfq=raw[5], payment=raw[6],
        )

    async def result_logs(
        self,
        service_id: int,
        call_id: int | None = None,
        operator: str | None = None,
        *,
        from_block: int | str = 0,
        to_block: int | str = "latest",
    ) -> list[ResultLog]:
        """``JobResultSubmitted`` logs of the Tangle contract for a service (a call, an operator)."""
        topics: list[Any] = [
            abi.JOB_RESULT_SUBMITTED_TOPIC,
            uint_topic(service_id),
            uint_topic(call_id) if call_id is not None else None,
            address_topic(operator) if operator else None,
        ]
        while topics and topics[-1] is None:
            topics.pop()
        raw_logs = await self.w3.eth.get_logs({
            "address": self.tangle_address, "topics": topics,
            "fromBlock": from_block, "toBlock": to_block,
        })
        out = []
        for entry in raw_logs:
            t = [_hex(x) for x in entry["topics"]]
            (output,) = abi_decode(list(abi.JOB_RESULT_SUBMITTED_DATA_TYPES), bytes(entry["data"]))
            out.append(ResultLog(
                service_id=int(t[1], 16), call_id=int(t[2], 16),
                operator=to_checksum_address("0x" + t[3][-40:]), output=output,
                block_number=int(entry["blockNumber"]), tx_hash=_hex(entry["transactionHash"]),
            ))
        return out

    # --- writes -----------------------------------------------------------------------------

    async def send(
        self,
        account: LocalAccount,
        fn: AsyncContractFunction,
        *,
        value: int = 0,
        gas: int | None = None,
        gas_multiplier: float = GAS_MULTIPLIER,
        gas_headroom: int = GAS_HEADROOM,
        nonce: int | None = None,
    ) -> Any:
        """Simulate, sign and send ``fn`` from ``account``, then wait for a successful receipt.

        ``gas``: an explicit limit; else ``estimate * gas_multiplier + gas_headroom``. Raises
        :class:`TransactionReverted` (decoded) when the simulation or the mined tx reverts, and
        :class:`ChainError` when no receipt arrives within ``receipt_timeout``.
        """
        what = fn.fn_name
        base: dict[str, Any] = {"from": account.address, "value": value}
        try:
            await fn.call(base)
            if gas is None:
                estimate = await fn.estimate_gas(base)
                gas = int(estimate * gas_multiplier) + gas_headroom
        except (ContractLogicError, Web3RPCError) as exc:
            raise _reverted(what, exc) from None
        tx = await fn.build_transaction({
            **base,
            "gas": gas,
            "nonce": nonce if nonce is not None else await self.w3.eth.get_transaction_count(
                account.address, "pending"),
            "chainId": await self.w3.eth.chain_id,
            **(await self.fees()),
        })
        return await self.send_raw(account, tx, what=what)

    async def send_raw(self, account: LocalAccount, tx: dict[str, Any], *, what: str = "transaction") -> Any:
        """Sign ``tx`` (complete: nonce, gas, fees, chainId), send it and wait for its receipt."""
        signed = account.sign_transaction(tx)
        tx_hash = await self.w3.eth.send_raw_transaction(signed.raw_transaction)
        try:
            receipt = await self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self.receipt_timeout, poll_latency=self.poll_latency
            )
        except TimeExhausted:
            waited = self.receipt_timeout
            raise ChainError(f"{what}: no receipt for {_hex(tx_hash)} within {waited}s") from None
        if receipt["status"] != 1:
            revert = await self._replay_revert(tx, receipt)
            raise TransactionReverted(what, revert, tx_hash=_hex(tx_hash))
        log.debug("chain.tx_ok", what=what, tx=_hex(tx_hash), gas_used=receipt["gasUsed"])
        return receipt

    async def fees(self) -> dict[str, int]:
        """EIP-1559 fields: twice the latest base fee plus the node's suggested tip."""
        block = await self.w3.eth.get_block("latest")
        base_fee = int(block.get("baseFeePerGas", 0) or 0)
        try:
            tip = int(await self.w3.eth.max_priority_fee)
        except (Web3RPCError, ValueError):
            tip = 1_000_000_000 if base_fee else 0
        return {"maxFeePerGas": 2 * base_fee + tip, "maxPriorityFeePerGas": tip}

    async def _replay_revert(self, tx: Mapping[str, Any], receipt: Mapping[str, Any]) -> DecodedRevert:
        """Why a mined tx failed: replay it as ``eth_call`` on the state before its block (an
        approximation: earlier txs of the same block are not replayed). Revert data decodes as
        usual; a failure without data that passes with more gas is reported as ``OutOfGas``
        (hooks behind a proxy run out of gas with 63/64 of the limit, so gasUsed stays below it).
        """
        call = {k: tx[k] for k in ("from", "to", "data", "value", "gas") if k in tx}
        before = max(int(receipt["blockNumber"]) - 1, 0)
        try:
            await self.w3.eth.call(call, block_identifier=before)
        except (ContractLogicError, Web3RPCError) as exc:
            revert = decode_revert(revert_data_of(exc))
            if revert.name != "EmptyRevert":
                return revert
        unlimited = {k: v for k, v in call.items() if k != "gas"}
        try:
            await self.w3.eth.call(unlimited, block_identifier=before)
        except (ContractLogicError, Web3RPCError):
            return DecodedRevert("EmptyRevert")
        return DecodedRevert("OutOfGas", (int(receipt["gasUsed"]), int(tx.get("gas", 0))))


def _reverted(what: str, exc: BaseException) -> TransactionReverted | ChainError:
    data = revert_data_of(exc)
    if data is None and not isinstance(exc, ContractLogicError):
        return ChainError(f"{what}: {type(exc).__name__}: {exc}")
    revert = decode_revert(data)
    if revert.name == "EmptyRevert" and isinstance(exc, ContractLogicError) and exc.message:
        revert = DecodedRevert("Error", (str(exc.message),))
    return TransactionReverted(what, revert)


def checksum_all(addresses: Iterable[str]) -> list[str]:
    """Checksummed copies of ``addresses`` (web3 refuses lowercase addresses as arguments)."""
    return [to_checksum_address(a) for a in addresses]

