"""A small async client for the TNT Core contracts over web3.py's ``AsyncWeb3`` (HTTP).

It exists so that set-up code, tools and tests share one way to build the contract objects from
:mod:`blueprint.tangle.abi`, one way to read (a view call whose revert is decoded) and one way to
send: :meth:`ChainClient.send` hands the transaction to the account's
:class:`~blueprint.tangle.txmanager.TxManager` (the package's one sender) after simulating it and
giving generous gas headroom (``eth_estimateGas`` can settle on a limit where a best-effort manager
hook silently runs out of gas). Every revert is a :class:`TxRevertedError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContract, AsyncContractFunction
from web3.exceptions import ContractLogicError, Web3RPCError

from blueprint.tangle import abi
from blueprint.tangle.abi import DecodedRevert, decode_revert, revert_data_of
from blueprint.tangle.events import (
    JobResultLog,
    RawLog,
    address_topic,
    decode_result_log,
    normalize_log,
    uint_topic,
)
from blueprint.tangle.rpc import PooledHTTPProvider, lean_web3
from blueprint.tangle.txmanager import ChainError, Receipt, TxManager, TxRevertedError

__all__ = ["ChainClient", "ChainError", "ChainSettings", "OnchainJobCall", "TxRevertedError",
           "checksum_all", "logs_with_topic"]

log = structlog.get_logger(__name__)

#: Default multiplier and floor added on top of ``eth_estimateGas``.
GAS_MULTIPLIER = 1.5
GAS_HEADROOM = 300_000
#: Gas a one-off send is simulated with (its own limit comes from the estimate or the caller):
#: room for any set-up call, under the usual node cap on ``eth_call`` gas.
SIMULATION_GAS = 30_000_000
#: ``Tangle.getJobCall``'s return type (``Types.JobCall``).
JOB_CALL_TYPE = "(uint8,address,uint64,uint32,bool,bool,uint256)"


class ChainSettings(Protocol):
    """What a chain client needs of the settings (:class:`blueprint.config.Settings` has it)."""

    @property
    def http_rpc_url(self) -> str: ...
    @property
    def tangle_contract(self) -> str: ...
    @property
    def staking_contract(self) -> str: ...
    @property
    def status_registry_contract(self) -> str: ...


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

    @classmethod
    def decode(cls, data: bytes) -> OnchainJobCall:
        """The view's return data (raw ``eth_call`` bytes), as the transaction manager reads it."""
        (raw,) = abi_decode([JOB_CALL_TYPE], data)
        return cls.from_tuple(raw)

    @classmethod
    def from_tuple(cls, raw: Sequence[Any]) -> OnchainJobCall:
        """The struct as web3 decodes it (a tuple in field order)."""
        return cls(job_index=int(raw[0]), caller=str(raw[1]), created_at=int(raw[2]),
                   result_count=int(raw[3]), completed=bool(raw[4]), is_rfq=bool(raw[5]),
                   payment=int(raw[6]))


def logs_with_topic(receipt: Receipt, topic0: str, address: str | None = None) -> list[RawLog]:
    """The logs of a receipt whose topic0 (and emitter, if given) match, as plain values."""
    wanted = address.lower() if address else None
    found = []
    for entry in receipt.logs:
        raw = normalize_log(entry)
        if not raw.topics or raw.topics[0] != topic0.lower():
            continue
        if wanted and raw.address != wanted:
            continue
        found.append(raw)
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
    ) -> None:
        """``receipt_timeout``: seconds :meth:`send` waits for each receipt."""
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
        self._chain_id: int | None = None

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
    def from_settings(cls, settings: ChainSettings, **kwargs: Any) -> ChainClient:
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
        """A view call; a revert raises :class:`TxRevertedError` with the decoded error."""
        tx: dict[str, Any] = {"from": to_checksum_address(sender)} if sender else {}
        try:
            return await fn.call(tx, block_identifier=block)
        except (ContractLogicError, Web3RPCError) as exc:
            raise _reverted(fn.fn_name, exc) from None

    async def get_job_call(self, service_id: int, call_id: int) -> OnchainJobCall:
        """``getJobCall(serviceId, callId)``."""
        raw = await self.call(self.tangle.functions.getJobCall(service_id, call_id))
        return OnchainJobCall.from_tuple(raw)

    async def result_logs(
        self,
        service_id: int,
        call_id: int | None = None,
        operator: str | None = None,
        *,
        from_block: int | str = 0,
        to_block: int | str = "latest",
    ) -> list[JobResultLog]:
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
        return [decode_result_log(entry) for entry in raw_logs]

    # --- writes -----------------------------------------------------------------------------

    async def sender(self, account: LocalAccount) -> TxManager:
        """A transaction manager for one-off sends from ``account``. Each takes its first nonce
        from the node, as every one-off send must: a reorg or another sender may have moved the
        account's nonce since the last one (the daemon's long-lived manager follows such moves
        from the node's nonce errors instead)."""
        if self._chain_id is None:
            self._chain_id = int(await self.w3.eth.chain_id)
        return TxManager(self.w3, account, chain_id=self._chain_id, gas_limit=SIMULATION_GAS,
                         receipt_timeout=self.receipt_timeout)

    async def send(
        self,
        account: LocalAccount,
        fn: AsyncContractFunction,
        *,
        value: int = 0,
        gas: int | None = None,
        gas_multiplier: float = GAS_MULTIPLIER,
        gas_headroom: int = GAS_HEADROOM,
    ) -> Receipt:
        """Simulate ``fn`` from ``account``, then send it through the account's
        :meth:`sender` and wait for a successful receipt.

        ``gas``: an explicit limit; else ``estimate * gas_multiplier + gas_headroom``. Raises
        :class:`TxRevertedError` (decoded) when the simulation or the mined tx reverts, and a
        :class:`ChainError` when no receipt arrives within ``receipt_timeout``.
        """
        txm = await self.sender(account)
        what = fn.fn_name
        to = fn.address
        data = bytes.fromhex(fn._encode_transaction_data().removeprefix("0x"))
        # simulate with room to spare: a set-up call can need more than a result's default gas
        # (activating a service of 16 operators takes about 5M)
        await txm.simulate(to, data, value=value, what=what, gas=SIMULATION_GAS)
        if gas is None:
            estimate = await txm.estimate_gas(to, data, value=value, what=what)
            gas = int(estimate * gas_multiplier) + gas_headroom
        return await txm.send_and_wait(to, data, gas=gas, value=value, simulate=False, what=what)


def _reverted(what: str, exc: BaseException) -> TxRevertedError | ChainError:
    data = revert_data_of(exc)
    if data is None and not isinstance(exc, ContractLogicError):
        return ChainError(f"{what}: {type(exc).__name__}: {exc}")
    revert = decode_revert(data)
    if revert.name == "EmptyRevert" and isinstance(exc, ContractLogicError) and exc.message:
        revert = DecodedRevert("Error", (str(exc.message),))
    return TxRevertedError(revert, what=what)


def checksum_all(addresses: Iterable[str]) -> list[str]:
    """Checksummed copies of ``addresses`` (web3 refuses lowercase addresses as arguments)."""
    return [to_checksum_address(a) for a in addresses]
