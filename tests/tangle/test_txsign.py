"""The lean EIP-1559 signer gives exactly the bytes eth-account gives, for calls and creations."""

from __future__ import annotations

import pytest
from eth_account import Account

from blueprint.tangle.txsign import Eip1559Signer

CASES = [
    dict(chain_id=31337, nonce=0, max_priority_fee=0, max_fee=0, gas=21_000, to="0x" + "11" * 20,
         value=0, data=b""),
    dict(chain_id=31337, nonce=7, max_priority_fee=1, max_fee=10**9 + 5, gas=3_000_000,
         to="0x0165878A594ca255338adfa4d48449f69242Eb8F", value=0, data=b"\x01" * 700),
    dict(chain_id=1, nonce=2**40, max_priority_fee=2 * 10**9, max_fee=300 * 10**9, gas=25_000_000,
         to=None, value=10**18, data=bytes(range(256)) * 3),
]


@pytest.mark.parametrize("case", CASES)
def test_signed_bytes_equal_eth_accounts(case: dict) -> None:  # type: ignore[type-arg]
    for _ in range(3):
        account = Account.create()
        tx = {"type": 2, "chainId": case["chain_id"], "nonce": case["nonce"], "gas": case["gas"],
              "maxPriorityFeePerGas": case["max_priority_fee"], "maxFeePerGas": case["max_fee"],
              "value": case["value"], "data": case["data"]}
        if case["to"] is not None:
            tx["to"] = case["to"]
        expected = bytes(account.sign_transaction(tx).raw_transaction)
        raw = Eip1559Signer(bytes(account.key)).sign(**case)
        assert raw == expected
        assert Account.recover_transaction(raw) == account.address
