"""EIP-1559 transaction signing in one step: RLP, keccak, secp256k1.

Why not ``LocalAccount.sign_transaction``: eth-account takes a transaction dict through
validation, normalisation and typed-transaction classes before it signs, about 0.4 ms per
transaction, and every result transaction is signed on the daemon's critical path (after the
simulation, before the broadcast, under the nonce lock). This module encodes exactly one shape,
a type-2 transaction with an empty access list (all the transaction manager sends), and is
checked byte for byte against eth-account by the tests.
"""

from __future__ import annotations

import coincurve
import rlp
from eth_hash.auto import keccak

_TYPE = b"\x02"


class Eip1559Signer:
    """Signs type-2 transactions with one secp256k1 key (kept as a libsecp256k1 key object)."""

    def __init__(self, secret: bytes) -> None:
        self._key = coincurve.PrivateKey(secret)

    def sign(self, *, chain_id: int, nonce: int, max_priority_fee: int, max_fee: int, gas: int,
             to: str | None, value: int, data: bytes) -> bytes:
        """The signed transaction's raw bytes (what ``eth_sendRawTransaction`` takes); ``to`` None
        creates a contract."""
        fields: list[object] = [chain_id, nonce, max_priority_fee, max_fee, gas,
                                bytes.fromhex(to[2:]) if to else b"", value, data, []]
        digest = keccak(_TYPE + rlp.encode(fields))
        signature = self._key.sign_recoverable(digest, hasher=None)  # r || s || v, low s
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:64], "big")
        return _TYPE + rlp.encode([*fields, signature[64], r, s])
