"""EIP-712 signed job quotes for ``submitJobFromQuote`` (per-request prices).

Matches tnt-core's ``SignatureLib`` exactly:

- domain ``EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)``
  with name ``"TangleQuote"``, version ``"1"``, the chain id, and the Tangle proxy as verifying
  contract;
- ``JobQuoteDetails(address requester,uint64 serviceId,uint8 jobIndex,uint256 price,
  uint64 timestamp,uint64 expiry,uint8 confidentiality,bytes32 inputsHash)``.

The quote binds the requester (only that caller may redeem it), the service, the job index, the
price, an expiry, and ``inputsHash = keccak256(inputs)``: the operator prices exactly these inputs
and a caller cannot swap in a longer request. Tangle rejects an expired quote (``QuoteExpired``),
one older than its max quote age (``QuoteTimestampTooOld``), a reused one (``QuoteAlreadyUsed``),
a bad signature (``InvalidQuoteSignature``) and changed inputs (``JobQuoteInputsMismatch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from blueprint.errors import InvalidRequestError

DOMAIN_NAME = "TangleQuote"
DOMAIN_VERSION = "1"
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
JOB_QUOTE_TYPE = (
    "JobQuoteDetails(address requester,uint64 serviceId,uint8 jobIndex,uint256 price,uint64 timestamp,"
    "uint64 expiry,uint8 confidentiality,bytes32 inputsHash)"
)
DOMAIN_TYPEHASH = keccak(text=DOMAIN_TYPE)
JOB_QUOTE_TYPEHASH = keccak(text=JOB_QUOTE_TYPE)


@dataclass(frozen=True, slots=True)
class JobQuoteDetails:
    """``Types.JobQuoteDetails``; ``price`` in wei, times in unix seconds."""

    requester: str
    service_id: int
    job_index: int
    price: int
    timestamp: int
    expiry: int
    inputs_hash: bytes
    confidentiality: int = 0

    def as_tuple(self) -> tuple[Any, ...]:
        """The struct in ABI field order, as web3 encodes it."""
        return (to_checksum_address(self.requester), self.service_id, self.job_index, self.price,
                self.timestamp, self.expiry, self.confidentiality, self.inputs_hash)

    def struct_hash(self) -> bytes:
        return keccak(abi_encode(
            ["bytes32", "address", "uint64", "uint8", "uint256", "uint64", "uint64", "uint8", "bytes32"],
            [JOB_QUOTE_TYPEHASH, *self.as_tuple()],
        ))

    def to_json(self) -> dict[str, Any]:
        return {
            "requester": to_checksum_address(self.requester), "serviceId": self.service_id,
            "jobIndex": self.job_index, "price": str(self.price), "timestamp": self.timestamp,
            "expiry": self.expiry, "confidentiality": self.confidentiality,
            "inputsHash": "0x" + self.inputs_hash.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobQuoteDetails:
        try:
            return cls(
                requester=to_checksum_address(data["requester"]), service_id=int(data["serviceId"]),
                job_index=int(data["jobIndex"]), price=int(data["price"]), timestamp=int(data["timestamp"]),
                expiry=int(data["expiry"]), confidentiality=int(data.get("confidentiality", 0)),
                inputs_hash=bytes.fromhex(str(data["inputsHash"]).removeprefix("0x")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"malformed quote details: {exc}") from None


@dataclass(frozen=True, slots=True)
class SignedJobQuote:
    """``Types.SignedJobQuote``: the details, the operator's 65-byte signature, the operator."""

    details: JobQuoteDetails
    signature: bytes
    operator: str

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.details.as_tuple(), self.signature, to_checksum_address(self.operator))

    def to_json(self) -> dict[str, Any]:
        return {"details": self.details.to_json(), "signature": "0x" + self.signature.hex(),
                "operator": to_checksum_address(self.operator)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SignedJobQuote:
        try:
            return cls(details=JobQuoteDetails.from_json(data["details"]),
                       signature=bytes.fromhex(str(data["signature"]).removeprefix("0x")),
                       operator=to_checksum_address(data["operator"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"malformed signed quote: {exc}") from None


def domain_separator(chain_id: int, tangle: str) -> bytes:
    """The Tangle contract's quote domain (computed at the current chain id, like the contract)."""
    return keccak(abi_encode(
        ["bytes32", "bytes32", "bytes32", "uint256", "address"],
        [DOMAIN_TYPEHASH, keccak(text=DOMAIN_NAME), keccak(text=DOMAIN_VERSION), chain_id,
         to_checksum_address(tangle)],
    ))


def job_quote_digest(details: JobQuoteDetails, *, chain_id: int, tangle: str) -> bytes:
    """``keccak256("\\x19\\x01" || domainSeparator || hashStruct(details))``."""
    return keccak(b"\x19\x01" + domain_separator(chain_id, tangle) + details.struct_hash())


def sign_job_quote(account: LocalAccount, details: JobQuoteDetails, *, chain_id: int,
                   tangle: str) -> SignedJobQuote:
    """Sign ``details`` as the operator ``account`` (r || s || v, v in {27, 28})."""
    digest = job_quote_digest(details, chain_id=chain_id, tangle=tangle)
    signed = account.unsafe_sign_hash(digest)
    return SignedJobQuote(details=details, signature=bytes(signed.signature), operator=account.address)


def recover_quote_signer(quote: SignedJobQuote, *, chain_id: int, tangle: str) -> str:
    """The address that signed ``quote`` (what Tangle compares with ``quote.operator``)."""
    digest = job_quote_digest(quote.details, chain_id=chain_id, tangle=tangle)
    return Account._recover_hash(digest, signature=quote.signature)


def inputs_hash(inputs: bytes) -> bytes:
    return keccak(inputs)
