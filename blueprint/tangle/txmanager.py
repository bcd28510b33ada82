"""The operator key's transaction manager: one nonce sequence, EIP-1559 fees, simulate, send,
wait, bump.

Why one manager per key: results are submitted concurrently, and two tasks that each asked the
node for a nonce would collide. Nonces are assigned locally and transactions signed under a
lock, so the sequence has no gap; the broadcast itself happens outside the lock, so under load
several ``eth_sendRawTransaction`` round trips overlap instead of queueing one after another (a
node accepts a nonce that arrives just before its predecessor and mines both in order). When the
node says the nonce is wrong ("nonce too low": someone else used the key), the sequence is re-read
from ``eth_getTransactionCount(pending)`` and the transaction is sent again; any other failed
broadcast makes the next send re-read it, which fills a gap the failure may have left.

This is the package's one sender: the daemon's results and heartbeats go through the operator's
manager, and :meth:`ChainClient.send <blueprint.tangle.chain.ChainClient.send>` (set-up steps,
tools, tests) through a manager made for each one-off send. A revert is always
:class:`TxRevertedError`.

A transaction is first simulated with ``eth_call`` unless the caller says not to (a revert is
decoded with the TNT Core custom errors and raised as :class:`TxRevertedError`, nothing is
spent). Gas is a generous fixed limit, not ``estimateGas``: TNT Core's best-effort result hook
runs with a 500k stipend, and an estimate that only just covers the outer call starves it
silently (``../shared/tnt-core/README.md``).

A transaction still unmined after ``bump_after`` seconds is re-signed with the same nonce and
fees raised by ``bump_factor`` (at least +10%, which nodes require for a replacement); the wait
watches every hash it sent.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError
from web3.types import RPCEndpoint

from blueprint.errors import BlueprintError
from blueprint.tangle.abi import DecodedRevert, decode_revert
from blueprint.tangle.rpc import raw_request, rpc_error_of
from blueprint.tangle.txsign import Eip1559Signer

log = structlog.get_logger(__name__)

_NONCE_ERRORS = ("nonce too low", "nonce too high", "already known", "known transaction",
                 "replacement transaction underpriced", "invalid nonce", "nonce has already been used")


class ChainError(BlueprintError):
    """The chain could not be reached or did not do what we asked."""

    http_status = 502
    code = "chain_error"
    retryable = True


class TxError(ChainError):
    code = "tx_error"
    retryable = False


class TxRevertedError(TxError):
    """The transaction reverts (in simulation or on chain); ``revert`` says why, ``what`` names
    the call when the sender knows it (``submitJob``)."""

    code = "tx_reverted"

    def __init__(self, revert: DecodedRevert, *, tx_hash: str | None = None, what: str | None = None) -> None:
        where = f" in {tx_hash}" if tx_hash else " in simulation"
        super().__init__(f"{what + ' ' if what else ''}reverted{where}: {revert}")
        self.revert = revert
        self.tx_hash = tx_hash
        self.what = what


class TxReplacedError(TxError):
    """Our nonce was used by a transaction we did not send (the key is shared): send again."""

    code = "tx_replaced"


class NonceGapError(TxReplacedError):
    """A reorg dropped transactions below our nonce, so ours can never be mined: the nonce was
    taken from the node again and the transaction must be sent again."""

    code = "nonce_gap"


class TxTimeoutError(TxError):
    code = "tx_timeout"


@dataclass
class SentTx:
    """A broadcast transaction; ``hashes`` holds every version (bumps) sent with its nonce."""

    nonce: int
    to: str | None  # None: a contract creation
    data: bytes
    gas: int
    max_fee: int
    priority_fee: int
    value: int = 0
    hashes: list[str] = field(default_factory=list)
    sent_at: float = 0.0
    #: Wall-clock time (``time.time()``) the node accepted the latest version: the ledger's
    #: ``submitted_at``.
    sent_unix: float = 0.0

    @property
    def tx_hash(self) -> str:
        """The latest version's hash."""
        return self.hashes[-1]


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined transaction; ``logs`` are the node's JSON log objects (hex strings)."""

    tx_hash: str
    status: int
    block_number: int
    block_hash: str
    gas_used: int
    logs: list[Any]
    contract_address: str | None = None


async def fetch_receipt(w3: AsyncWeb3, tx_hash: str) -> Receipt | None:
    """The receipt of a mined transaction (raw JSON-RPC, see :func:`raw_request`), None while it
    is unknown or pending."""
    return _receipt_of(tx_hash, await raw_request(w3, "eth_getTransactionReceipt", [tx_hash]))


def _receipt_of(tx_hash: str, raw: Any) -> Receipt | None:
    if not raw or raw.get("blockNumber") is None:
        return None
    return Receipt(
        tx_hash=tx_hash,
        status=int(raw["status"], 16),
        block_number=int(raw["blockNumber"], 16),
        block_hash=str(raw["blockHash"]).lower(),
        gas_used=int(raw["gasUsed"], 16),
        logs=list(raw.get("logs") or []),
        contract_address=raw.get("contractAddress"),
    )


class ReceiptBatcher:
    """Receipt look-ups of many waiting transactions, sent as one JSON-RPC batch per round trip.

    Why: under a burst a hundred transactions wait for their receipts at once, each polling on
    its own schedule; those polls were five in six of the daemon's RPCs, each with its own HTTP
    exchange competing with the simulations and broadcasts on the critical path. Look-ups made
    while a batch is in flight go out together in the next one. A node that refuses batches
    gets the look-ups one by one.
    """

    def __init__(self, w3: AsyncWeb3) -> None:
        self.w3 = w3
        self._waiting: dict[str, list[asyncio.Future[Receipt | None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._batches = getattr(w3.provider, "make_batch_request", None) is not None

    async def receipt(self, tx_hash: str) -> Receipt | None:
        future: asyncio.Future[Receipt | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tx_hash, []).append(future)
        if self._task is None or self._task.done() or self._task.get_loop() is not future.get_loop():
            self._task = asyncio.create_task(self._drain(), name="receipt-batcher")
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # look-ups made in the same tick share the first batch
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                found = await self._fetch(list(batch))
            except asyncio.CancelledError:
                for futures in batch.values():
                    for future in futures:
                        future.cancel()
                raise
            for tx_hash, futures in batch.items():
                outcome = found[tx_hash]
                for future in futures:
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)

    async def _fetch(self, hashes: list[str]) -> dict[str, Receipt | BaseException | None]:
        if len(hashes) > 1 and self._batches:
            try:
                replies = await self.w3.provider.make_batch_request(  # type: ignore[attr-defined]
                    [(RPCEndpoint("eth_getTransactionReceipt"), [h]) for h in hashes])
            except Exception:  # the node is down, or refuses batches: this round one by one
                replies = None
            if isinstance(replies, list) and len(replies) == len(hashes):
                return {h: self._reply(h, reply) for h, reply in zip(hashes, replies, strict=True)}
            if replies is not None:  # an answer, but not to a batch: this node takes none
                self._batches = False
                log.info("tx.receipt_batches_off", reply=type(replies).__name__)
        results = await asyncio.gather(*(fetch_receipt(self.w3, h) for h in hashes), return_exceptions=True)
        return dict(zip(hashes, results, strict=True))

    @staticmethod
    def _reply(tx_hash: str, reply: Any) -> Receipt | BaseException | None:
        error = reply.get("error") if isinstance(reply, Mapping) else "not an object"
        if error is not None:
            message = error.get("message") if isinstance(error, Mapping) else None
            return Web3RPCError(str(message or error), rpc_response=reply)
        try:
            return _receipt_of(tx_hash, reply.get("result"))
        except (KeyError, TypeError, ValueError) as exc:
            return exc


def _hex_bytes(item: Any) -> bytes | None:
    """Bytes of a ``0x`` hex string (or of the ``data`` inside a nested error object)."""
    if isinstance(item, Mapping):
        item = item.get("data")
    if isinstance(item, str) and item.startswith("0x"):
        try:
            return bytes.fromhex(item[2:])
        except ValueError:
            return None
    return None


def _reverted(exc: Web3RPCError, what: str | None) -> TxRevertedError | None:
    """The decoded revert an ``eth_call``/``eth_estimateGas`` error carries; None when the error
    is not a revert (transport trouble, a node error)."""
    revert = _hex_bytes(rpc_error_of(exc).get("data"))
    if revert is not None or "revert" in str(exc).lower():
        return TxRevertedError(decode_revert(revert), what=what)
    return None


def _is_nonce_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _NONCE_ERRORS)


class TxManager:
    """Sends the operator's transactions.

    Args:
        w3: an ``AsyncWeb3`` over HTTP (or WebSocket) to the chain.
        account: the operator's local account (signs; never leaves the process).
        chain_id: read from the node when None.
        gas_limit: default gas for a transaction when the caller gives none.
        min_priority_fee: floor of the tip in wei (the node's suggestion is used when higher).
        max_fee_cap: never offer more than this per gas (wei), bumps included; None: no cap.
        bump_after: seconds without a receipt before re-sending with higher fees.
        bump_factor: fee multiplier per bump (>= 1.1).
        max_bumps: how many times one nonce is bumped.
        receipt_timeout: seconds :meth:`wait` waits in all before TxTimeoutError.
        fee_ttl: seconds the base fee and tip are cached (one RPC per this period, not per tx).
    """

    def __init__(
        self,
        w3: AsyncWeb3,
        account: LocalAccount,
        *,
        chain_id: int | None = None,
        gas_limit: int = 3_000_000,
        min_priority_fee: int = 0,
        max_fee_cap: int | None = None,
        bump_after: float = 20.0,
        bump_factor: float = 1.125,
        max_bumps: int = 5,
        receipt_timeout: float = 300.0,
        fee_ttl: float = 2.0,
    ) -> None:
        if bump_factor < 1.1:
            raise ValueError("bump_factor must be at least 1.1 (nodes refuse smaller replacements)")
        self.w3 = w3
        self.account = account
        self.address = account.address
        self.chain_id = chain_id
        self.gas_limit = gas_limit
        self.min_priority_fee = min_priority_fee
        self.max_fee_cap = max_fee_cap
        self.bump_after = bump_after
        self.bump_factor = bump_factor
        self.max_bumps = max_bumps
        self.receipt_timeout = receipt_timeout
        self.fee_ttl = fee_ttl
        self._nonce: int | None = None
        self._lock = asyncio.Lock()
        self._fees: tuple[int, int] | None = None
        self._fees_at = 0.0
        #: Counters read by the metrics: broadcasts, fee bumps, mined reverts, nonce reads from the node.
        self.txs_sent = 0
        self.txs_bumped = 0
        self.txs_reverted = 0
        self.nonce_resyncs = 0
        self._receipts = ReceiptBatcher(w3)
        self._signer = Eip1559Signer(bytes(account.key))

    # --- reading the chain --------------------------------------------------------------------

    async def resync_nonce(self) -> int:
        """Re-read the next nonce from the node (``pending`` counts the mempool)."""
        self.nonce_resyncs += 1
        self._nonce = await self.w3.eth.get_transaction_count(self.address, "pending")
        return self._nonce

    async def fees(self) -> tuple[int, int]:
        """``(max_fee_per_gas, max_priority_fee_per_gas)``: 2 x base fee + tip, cached briefly."""
        now = time.monotonic()
        if self._fees is None or now - self._fees_at > self.fee_ttl:
            block = await self.w3.eth.get_block("latest")
            base = int(block.get("baseFeePerGas") or 0)
            try:
                tip = int(await self.w3.eth.max_priority_fee)
            except (Web3RPCError, ValueError):
                tip = 0
            tip = max(tip, self.min_priority_fee)
            max_fee = 2 * base + tip
            if self.max_fee_cap is not None:
                max_fee = min(max_fee, self.max_fee_cap)
                tip = min(tip, max_fee)
            self._fees = (max_fee, tip)
            self._fees_at = now
        return self._fees

    def _call(self, to: str | None, data: bytes, *, gas: int | None, value: int = 0) -> dict[str, str]:
        call = {"from": self.address, "data": "0x" + data.hex()}
        if to is not None:
            call["to"] = to
        if gas is not None:
            call["gas"] = hex(gas)
        if value:
            call["value"] = hex(value)
        return call

    async def simulate(self, to: str | None, data: bytes, *, gas: int | None = None, value: int = 0,
                       what: str | None = None, block: str = "pending") -> bytes:
        """``eth_call`` the transaction from the operator; TxRevertedError with the decoded reason.

        ``block`` ``pending`` (the default) also sees our own transactions still in the mempool;
        ``latest`` is enough for a call no transaction of ours can have touched yet, and costs a
        node far less under load (anvil builds the pending block for every such call).
        """
        call = self._call(to, data, gas=gas or self.gas_limit, value=value)
        try:
            result = await raw_request(self.w3, "eth_call", [call, block])
        except Web3RPCError as exc:
            reverted = _reverted(exc, what)
            if reverted is not None:
                raise reverted from exc
            raise
        return _hex_bytes(result) or b""

    async def estimate_gas(self, to: str | None, data: bytes, *, value: int = 0,
                           what: str | None = None) -> int:
        """``eth_estimateGas`` of the transaction; TxRevertedError when it reverts."""
        call = self._call(to, data, gas=None, value=value)
        try:
            return int(await raw_request(self.w3, "eth_estimateGas", [call]), 16)
        except Web3RPCError as exc:
            reverted = _reverted(exc, what)
            if reverted is not None:
                raise reverted from exc
            raise

    # --- sending ------------------------------------------------------------------------------

    async def send(self, to: str | None, data: bytes, *, gas: int | None = None, value: int = 0,
                   simulate: bool = True, what: str | None = None) -> SentTx:
        """Simulate (unless told not to), then sign and broadcast with the next nonce.

        ``to`` None creates a contract from ``data``. Returns once the node accepted the
        transaction; :meth:`wait` gets the receipt.
        """
        if simulate:
            await self.simulate(to, data, gas=gas, value=value, what=what)
        if self.chain_id is None:
            self.chain_id = await self.w3.eth.chain_id
        max_fee, tip = await self.fees()
        gas = gas or self.gas_limit
        for attempt in range(4):
            async with self._lock:  # the nonce is taken and signed in order; the send overlaps
                if self._nonce is None:
                    await self.resync_nonce()
                assert self._nonce is not None
                sent = SentTx(nonce=self._nonce, to=to, data=data, gas=gas, max_fee=max_fee, priority_fee=tip,
                              value=value)
                raw = self._sign(sent)
                self._nonce += 1
            try:
                await self._send_raw(sent, raw)
            except Web3RPCError as exc:
                async with self._lock:
                    if not _is_nonce_error(exc) or attempt == 3:
                        # the nonce may or may not be consumed: ask the node next time
                        self._nonce = None
                        raise
                    fresh = await self.resync_nonce()
                log.warning("tx.nonce_resync", error=str(exc), nonce=fresh, attempt=attempt)
                continue
            except BaseException:
                self._nonce = None
                raise
            self.txs_sent += 1
            return sent
        raise TxError("could not find a usable nonce")  # pragma: no cover (loop always returns/raises)

    async def _broadcast(self, sent: SentTx) -> None:
        await self._send_raw(sent, self._sign(sent))

    def _sign(self, sent: SentTx) -> bytes:
        assert self.chain_id is not None
        return self._signer.sign(chain_id=self.chain_id, nonce=sent.nonce, max_priority_fee=sent.priority_fee,
                                 max_fee=sent.max_fee, gas=sent.gas, to=sent.to, value=sent.value,
                                 data=sent.data)

    async def _send_raw(self, sent: SentTx, raw: bytes) -> None:
        tx_hash = await raw_request(self.w3, "eth_sendRawTransaction", ["0x" + raw.hex()])
        sent.hashes.append(str(tx_hash).lower())
        sent.sent_at = time.monotonic()
        sent.sent_unix = time.time()

    async def receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt of a mined transaction, None while it is unknown or pending (concurrent
        look-ups share one batch request, see :class:`ReceiptBatcher`)."""
        return await self._receipts.receipt(tx_hash)

    async def _bump(self, sent: SentTx) -> bool:
        """Re-send ``sent`` with the same nonce and higher fees; False if the nonce is gone."""
        new_tip = max(math.ceil(sent.priority_fee * self.bump_factor), sent.priority_fee + 1)
        new_max = max(math.ceil(sent.max_fee * self.bump_factor), sent.max_fee + 1, new_tip)
        if self.max_fee_cap is not None and new_max > self.max_fee_cap:
            log.warning("tx.bump_capped", nonce=sent.nonce, max_fee_cap=self.max_fee_cap)
            return True
        old = (sent.max_fee, sent.priority_fee)
        sent.max_fee, sent.priority_fee = new_max, new_tip
        try:
            await self._broadcast(sent)
        except Web3RPCError as exc:
            sent.max_fee, sent.priority_fee = old
            if _is_nonce_error(exc):
                return False
            raise
        self.txs_bumped += 1
        log.info("tx.bumped", nonce=sent.nonce, tx_hash=sent.tx_hash, max_fee=new_max, tip=new_tip)
        return True

    async def wait(self, sent: SentTx, *, limit: float | None = None) -> Receipt:
        """The receipt of whichever version of ``sent`` was mined; bumps fees while it is stuck.

        Raises TxReplacedError when the nonce was consumed by a transaction we did not send, and
        TxTimeoutError past ``limit`` seconds (default ``receipt_timeout``).
        """
        deadline = time.monotonic() + (limit if limit is not None else self.receipt_timeout)
        delay = 0.01
        bumps = 0
        last_send = sent.sent_at or time.monotonic()
        while True:
            for tx_hash in reversed(sent.hashes):
                receipt = await self.receipt(tx_hash)
                if receipt is None:
                    continue
                if receipt.status != 1:
                    self.txs_reverted += 1
                return receipt
            now = time.monotonic()
            if now >= deadline:
                raise TxTimeoutError(f"no receipt for nonce {sent.nonce} ({sent.tx_hash})")
            if now - last_send >= self.bump_after:
                mined = await self.w3.eth.get_transaction_count(self.address, "latest")
                if mined > sent.nonce:
                    # the nonce is used; give our hashes one more look before calling it replaced
                    await asyncio.sleep(delay)
                    if not await self._any_receipt(sent):
                        raise TxReplacedError(f"nonce {sent.nonce} was used by another transaction")
                    continue
                pending = await self.w3.eth.get_transaction_count(self.address, "pending")
                if pending < sent.nonce:
                    # a gap below our nonce (a reorg dropped earlier transactions): this one can
                    # never be mined. Take nonces from the node again and let the caller resend.
                    async with self._lock:
                        self._nonce = None
                    raise NonceGapError(f"nonce {sent.nonce} is past the chain's next nonce {pending}")
                if bumps < self.max_bumps and not await self._bump(sent):
                    if not await self._any_receipt(sent):
                        raise TxReplacedError(f"nonce {sent.nonce} was used by another transaction")
                    continue
                bumps += 1
                last_send = time.monotonic()
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)

    async def _any_receipt(self, sent: SentTx) -> bool:
        for tx_hash in sent.hashes:
            if await self.receipt(tx_hash) is not None:
                return True
        return False

    async def send_and_wait(self, to: str | None, data: bytes, *, gas: int | None = None, value: int = 0,
                            simulate: bool = True, limit: float | None = None,
                            what: str | None = None) -> Receipt:
        """Simulate (unless told not to), send and wait (``limit``: see :meth:`wait`); a mined
        revert raises TxRevertedError with the reason :meth:`mined_revert` finds."""
        sent = await self.send(to, data, gas=gas, value=value, simulate=simulate, what=what)
        try:
            receipt = await self.wait(sent, limit=limit)
        except NonceGapError:  # never mined and never will be: the same call once more, fresh nonce
            log.warning("tx.resend_after_gap", what=what, nonce=sent.nonce)
            sent = await self.send(to, data, gas=gas, value=value, simulate=simulate, what=what)
            receipt = await self.wait(sent, limit=limit)
        if receipt.status != 1:
            raise TxRevertedError(await self.mined_revert(sent, receipt), tx_hash=receipt.tx_hash, what=what)
        log.debug("tx.ok", what=what, tx_hash=receipt.tx_hash, gas_used=receipt.gas_used)
        return receipt

    async def mined_revert(self, sent: SentTx, receipt: Receipt) -> DecodedRevert:
        """Why a mined transaction failed: replayed as ``eth_call`` on the state before its block
        (an approximation: earlier transactions of the same block are not replayed). Revert data
        decodes as usual; a failure without data that passes with no gas limit is ``OutOfGas``
        (hooks behind a proxy run out of gas with 63/64 of the limit, so gasUsed stays below it).
        """
        before = hex(max(receipt.block_number - 1, 0))
        for gas in (sent.gas, None):
            try:
                await raw_request(self.w3, "eth_call",
                                  [self._call(sent.to, sent.data, gas=gas, value=sent.value), before])
            except Web3RPCError as exc:
                revert = decode_revert(_hex_bytes(rpc_error_of(exc).get("data")))
                if revert.name != "EmptyRevert" or gas is None:
                    return revert
                continue
            if gas is None:
                return DecodedRevert("OutOfGas", (receipt.gas_used, sent.gas))
        return DecodedRevert("EmptyRevert")

    async def revert_reason(self, to: str, data: bytes, *, gas: int | None = None) -> DecodedRevert:
        """Why the transaction reverts now (re-simulated), or EmptyRevert if it no longer does."""
        try:
            await self.simulate(to, data, gas=gas)
        except TxRevertedError as exc:
            return exc.revert
        return DecodedRevert("EmptyRevert")
