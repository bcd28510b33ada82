"""The quote route's wire types and its one error: what the HTTP server needs to host quotes
(it validates requests and documents the route from these), with no pricing or signing in them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from eth_utils import is_address, to_checksum_address
from pydantic import BaseModel, ConfigDict, Field, field_validator

from blueprint.errors import BlueprintError

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
TokenCount = Literal["tokenizer", "estimate"]


class QuotesUnavailableError(BlueprintError):
    http_status = 503
    error_type = "server_error"
    code = "quotes_disabled"


class QuoteRequest(BaseModel):
    """What to price: the job exactly as it will be submitted, and who will submit it."""

    model_config = ConfigDict(extra="forbid")

    service_id: Annotated[int, Field(ge=0, le=UINT64_MAX)] | None = None
    job_index: Literal[0, 1, 2]
    model: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=0, le=UINT32_MAX)]
    request: dict[str, Any]
    requester: str
    ttl_s: Annotated[int, Field(ge=1)] | None = None

    @field_validator("requester")
    @classmethod
    def _address(cls, value: str) -> str:
        if not is_address(value):
            raise ValueError("requester must be a 0x address")
        return to_checksum_address(value)


class QuoteDetails(BaseModel):
    """``Types.JobQuoteDetails`` as JSON, with the struct's field names (``price`` in wei as a
    decimal string)."""

    requester: str
    serviceId: int
    jobIndex: int
    price: str
    timestamp: int
    expiry: int
    confidentiality: int
    inputsHash: str


class SignedQuote(BaseModel):
    """``Types.SignedJobQuote``: pass it to ``submitJobFromQuote`` with ``msg.value = price``."""

    details: QuoteDetails
    signature: str
    operator: str


class QuoteResponse(BaseModel):
    quote: SignedQuote
    price_wei: str
    prompt_tokens: int
    completion_tokens: int
    token_count: TokenCount
    inputs: str = Field(description="The job inputs (0x hex) the quote is bound to.")
