"""``POST /v1/quote``: a per-request price, signed for ``submitJobFromQuote``.

The operator prices exactly the job inputs the caller will submit,
``abi.encode(string model, uint32 maxTokens, string request)`` with ``request`` the compact JSON
of the body's ``request`` (what :func:`blueprint.jobs.codec.encode_inputs` makes of it), as

    price = prompt_tokens * price_per_prompt_token + maxTokens * price_per_completion_token

in wei, with the prices of the operator's offer (each node's ``options.price_per_prompt_token_wei``
/ ``options.price_per_completion_token_wei``, built by the same code as ``register``).
``maxTokens`` is the ceiling the daemon never exceeds, so the completion part is an upper bound
paid up front. Prompt tokens are counted by a node of the model that has its tokenizer in
process (:meth:`LlmClient.count_tokens`, the transformers engine); otherwise they are estimated
as ``ceil(utf8_bytes / 3)`` of the prompt text (of the messages' JSON for chat), which is above
the count of BPE tokenizers on ordinary text (about 4 bytes per token) and says so in the
answer (``token_count: "estimate"``).

The answer is a tnt-core ``SignedJobQuote`` (EIP-712, :mod:`blueprint.tangle.quotes`) bound to
the requester, the service, the job index, the price, ``keccak256(inputs)`` and an expiry; the
request is first checked the way the daemon will check the job, so a quote is never given for a
job that would only earn an error answer.

Without an operator key the route answers 503 ``quotes_disabled``: :func:`enable_quotes` attaches
a :class:`Quoter` to the app (the daemon does so; ``serve`` has no key).
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

import structlog
from aiohttp import web
from eth_account.signers.local import LocalAccount
from eth_utils import is_address, to_checksum_address
from pydantic import BaseModel, ConfigDict, Field, field_validator

from blueprint.contracts.offer import Offer
from blueprint.errors import BlueprintError, InvalidRequestError, ModelNotFoundError
from blueprint.jobs.codec import JobInputs, encode_inputs
from blueprint.jobs.handlers import prepare_chat, prepare_completion, prepare_embeddings
from blueprint.llm.types import ChatMessage, parse_request
from blueprint.tangle.quotes import JobQuoteDetails, inputs_hash, job_quote_digest, sign_job_quote

if TYPE_CHECKING:
    from blueprint.config import Settings

log = structlog.get_logger(__name__)

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
#: Bytes per token of the fallback estimate (see the module docstring).
ESTIMATE_BYTES_PER_TOKEN = 3
TokenCount = Literal["tokenizer", "estimate"]


class QuotesUnavailableError(BlueprintError):
    http_status = 503
    error_type = "server_error"
    code = "quotes_disabled"


# --- wire types ---------------------------------------------------------------------------------

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


# --- pricing and signing ------------------------------------------------------------------------

def estimate_tokens(prompt: str | Sequence[ChatMessage]) -> int:
    """``ceil(utf8 bytes / 3)`` of the text (of the messages' JSON for chat), at least 1."""
    if isinstance(prompt, str):
        size = len(prompt.encode())
    else:
        size = sum(len(m.model_dump_json(exclude_none=True).encode()) for m in prompt)
    return max(1, math.ceil(size / ESTIMATE_BYTES_PER_TOKEN))


@dataclass
class Quoter:
    """Prices and signs quotes for one operator and service.

    Args:
        account: the operator's key (the quote's signer; Tangle checks it is a service operator).
        chain_id, tangle: the EIP-712 domain (the Tangle proxy is the verifying contract).
        offer: the models and wei-per-token prices offered.
        balancer: the nodes; one with an in-process tokenizer counts prompt tokens.
        service_id: the service this operator answers (a quote for another one is refused).
        default_ttl_s / max_ttl_s: quote lifetime when the caller asks none / at most.
        clock: wall clock in seconds (tests).
    """

    account: LocalAccount
    chain_id: int
    tangle: str
    offer: Offer
    balancer: Any
    service_id: int | None = None
    default_ttl_s: int = 300
    max_ttl_s: int = 3600
    clock: Callable[[], float] = time.time
    _issued: OrderedDict[bytes, None] = field(default_factory=OrderedDict, repr=False)

    async def quote(self, req: QuoteRequest) -> QuoteResponse:
        service_id = self._service(req.service_id)
        terms = self.offer.model(req.model)
        if terms is None or req.model not in {m.id for m in self.balancer.models()}:
            raise ModelNotFoundError(req.model)
        if req.max_tokens > terms.max_output_tokens:
            raise InvalidRequestError(
                f"max_tokens {req.max_tokens} is above this operator's limit of {terms.max_output_tokens} "
                f"for {req.model!r}.", code="max_tokens_above_limit", param="max_tokens")
        request_text = json.dumps(req.request, separators=(",", ":"))
        pieces, exact = _prompt_pieces(req.job_index, JobInputs(req.model, req.max_tokens, request_text))
        counted, how = await self._count(req.model, pieces) if pieces else (0, "tokenizer")
        prompt_tokens = counted + exact
        price = terms.price_for(prompt_tokens, req.max_tokens)
        inputs = encode_inputs(req.model, req.max_tokens, request_text)
        ttl = min(req.ttl_s or self.default_ttl_s, self.max_ttl_s)
        now = int(self.clock())
        details = JobQuoteDetails(requester=req.requester, service_id=service_id, job_index=req.job_index,
                                  price=price, timestamp=now, expiry=now + ttl,
                                  inputs_hash=inputs_hash(inputs))
        details = self._unused(details)
        signed = sign_job_quote(self.account, details, chain_id=self.chain_id, tangle=self.tangle)
        log.info("quote.signed", service_id=service_id, job_index=req.job_index, model=req.model,
                 prompt_tokens=prompt_tokens, max_tokens=req.max_tokens, price_wei=price, token_count=how)
        return QuoteResponse(
            quote=SignedQuote.model_validate(signed.to_json()), price_wei=str(price),
            prompt_tokens=prompt_tokens, completion_tokens=req.max_tokens, token_count=how,
            inputs="0x" + inputs.hex(),
        )

    def _service(self, asked: int | None) -> int:
        if asked is None:
            if self.service_id is None:
                raise InvalidRequestError("service_id is required.", param="service_id")
            return self.service_id
        if self.service_id is not None and asked != self.service_id:
            raise InvalidRequestError(f"This operator answers service {self.service_id}, not {asked}.",
                                      code="wrong_service", param="service_id")
        return asked

    async def _count(self, model: str, pieces: list[str | list[ChatMessage]]) -> tuple[int, TokenCount]:
        """With the first node of ``model`` that has a tokenizer, else the estimate."""
        for node in self.balancer.nodes():
            if not node.client.serves(model):
                continue
            try:
                counts = [await node.client.count_tokens(piece) for piece in pieces]
            except BlueprintError:
                raise
            except Exception as exc:  # a tokenizer failure: price by the estimate instead
                log.warning("quote.count_failed", node=node.name, error=str(exc))
                continue
            if all(c is not None for c in counts):
                return sum(c for c in counts if c is not None), "tokenizer"
        return sum(estimate_tokens(piece) for piece in pieces), "estimate"

    def _unused(self, details: JobQuoteDetails) -> JobQuoteDetails:
        """Tangle refuses a quote whose digest was used before (``QuoteAlreadyUsed``): two equal
        requests in the same second would get the same digest, so the second is dated a second
        earlier (it still expires at the same time)."""
        for _ in range(64):
            digest = job_quote_digest(details, chain_id=self.chain_id, tangle=self.tangle)
            if digest not in self._issued:
                self._issued[digest] = None
                while len(self._issued) > 4096:
                    self._issued.popitem(last=False)
                return details
            details = replace(details, timestamp=details.timestamp - 1)
        raise QuotesUnavailableError("Too many identical quotes at once; retry in a second.",
                                     code="quote_rate")


def _prompt_pieces(job_index: int, inputs: JobInputs) -> tuple[list[str | list[ChatMessage]], int]:
    """The prompt parts to count, and tokens known exactly (embedding inputs given as token
    ids), after the checks the daemon applies to the job."""
    if job_index == 0:
        return [list(prepare_chat(inputs).messages)], 0
    if job_index == 1:
        return list(prepare_completion(inputs).prompts()), 0
    request = prepare_embeddings(inputs)
    texts = request.texts()
    if texts is not None:
        return list(texts), 0
    return [], sum(len(ids) for ids in request.token_lists() or [])


# --- the app hook -------------------------------------------------------------------------------

QUOTER_KEY = web.AppKey("quoter", Quoter)


def enable_quotes(app: web.Application, quoter: Quoter) -> None:
    """Serve signed quotes on ``app`` (call before the app starts)."""
    app[QUOTER_KEY] = quoter


async def handle_quote(app: web.Application, body: bytes) -> web.Response:
    """The route's work (the app's guard maps errors to OpenAI error objects)."""
    quoter = app.get(QUOTER_KEY)
    if quoter is None:
        raise QuotesUnavailableError(
            "Quotes are disabled: this API runs without an operator key (quotes are served by "
            "`python -m blueprint run` with KEYSTORE_URI and SERVICE_ID).")
    response = await quoter.quote(parse_request(QuoteRequest, body))
    return web.Response(body=response.model_dump_json().encode(), content_type="application/json")


def quoter_from_settings(settings: Settings, balancer: Any, account: LocalAccount, chain_id: int) -> Quoter:
    """A :class:`Quoter` with the prices ``register`` would put in the offer."""
    from blueprint.commands.register import offer_from_settings

    offer = offer_from_settings(settings, "")
    return Quoter(account=account, chain_id=chain_id, tangle=settings.tangle_contract, offer=offer,
                  balancer=balancer, service_id=settings.service_id)


def enable_quotes_from_settings(app: web.Application, settings: Settings, balancer: Any,
                                account: LocalAccount, chain_id: int) -> Quoter | None:
    """:func:`enable_quotes` with :func:`quoter_from_settings`; an offer the configured nodes
    cannot make (e.g. more models than fit on chain) leaves quotes disabled (None), with a
    warning, rather than stopping the daemon. The daemon then prices from its on-chain offer."""
    try:
        quoter = quoter_from_settings(settings, balancer, account, chain_id)
    except BlueprintError as exc:
        log.warning("quotes.disabled", reason=exc.message)
        return None
    enable_quotes(app, quoter)
    log.info("quotes.enabled", operator=account.address, models=[m.model for m in quoter.offer.models])
    return quoter
