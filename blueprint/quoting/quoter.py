"""The quoter: a per-request price for ``POST /v1/quote``, signed for ``submitJobFromQuote``.

The operator prices exactly the job inputs the caller will submit,
``abi.encode(string model, uint32 maxTokens, string request)`` with ``request`` the compact JSON
of the body's ``request`` (what :func:`blueprint.jobs.codec.encode_inputs` makes of it), as

    price = prompt_tokens * price_per_prompt_token + maxTokens * price_per_completion_token

in wei, with the prices of the operator's offer (each node's ``options.price_per_prompt_token_wei``
/ ``options.price_per_completion_token_wei``, built by the same code as ``register``).
``maxTokens`` is the ceiling the daemon never exceeds, so the completion part is an upper bound
paid up front. Prompt tokens are counted by a node of the model that has its tokenizer in
process (:meth:`LlmClient.count_tokens`, the transformers engine); otherwise they are estimated
as one token per UTF-8 byte of the prompt text (of the messages' JSON for chat) plus a few per
message and prompt (:func:`estimate_tokens`): an upper bound whatever the text, so a caller
cannot game it, and it says so in the answer (``token_count: "estimate"``).

The answer is a tnt-core ``SignedJobQuote`` (EIP-712, :mod:`blueprint.tangle.quotes`) bound to
the requester, the service, the job index, the price, ``keccak256(inputs)`` and an expiry; the
request is first checked the way the daemon will check the job, so a quote is never given for a
job that would only earn an error answer.

Without an operator key the route answers 503 ``quotes_disabled``: the daemon attaches a
:class:`Quoter` to the app (:func:`blueprint.server.quote_route.enable_quotes`; ``serve`` has no key).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import structlog
from eth_account.signers.local import LocalAccount

from blueprint.contracts.offer import Offer, offer_from_nodes
from blueprint.errors import (
    BlueprintError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
)
from blueprint.jobs.codec import JobInputs, encode_inputs
from blueprint.jobs.handlers import prepare_chat, prepare_completion, prepare_embeddings
from blueprint.llm.types import ChatMessage
from blueprint.quoting.wire import (
    QuoteRequest,
    QuoteResponse,
    QuotesUnavailableError,
    SignedQuote,
    TokenCount,
)
from blueprint.tangle.quotes import JobQuoteDetails, inputs_hash, job_quote_digest, sign_job_quote

if TYPE_CHECKING:
    from blueprint.balancer import Balancer
    from blueprint.config import Settings

log = structlog.get_logger(__name__)

#: Tokens the fallback estimate adds per message (role markers of a chat template) and per
#: prompt (BOS/EOS, the assistant's header): over the count of the templates we know.
ESTIMATE_TOKENS_PER_MESSAGE = 8
ESTIMATE_TOKENS_PER_PROMPT = 16
#: Quotes the console lists (newest first); older ones fall off. In memory only: the chain keeps
#: the quotes that were used (``submitJobFromQuote``), and the logs keep every ``quote.signed``.
RECENT_QUOTES = 100


class RecentQuotes:
    """A bounded ring of the quotes this node signed, for the operator console (its
    ``QuoteLog`` Protocol): what was priced, for whom, and until when."""

    def __init__(self, size: int = RECENT_QUOTES) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)

    def add(self, entry: dict[str, Any]) -> None:
        self._ring.append(entry)

    def recent_quotes(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` quotes, newest first (plain JSON data)."""
        return [dict(entry) for entry in list(reversed(self._ring))[:max(0, limit)]]


# --- pricing and signing ------------------------------------------------------------------------

def estimate_tokens(prompt: str | Sequence[ChatMessage]) -> int:
    """An upper bound of the prompt's tokens without its tokenizer, so that the estimate errs in
    the operator's favour: one token per UTF-8 byte (byte-level BPE and SentencePiece with byte
    fallback never make more), of the messages' JSON for chat plus a few tokens per message and
    per prompt for the chat template and special tokens. (``bytes / 3`` was gamed: text of
    3-byte characters or digits counted 2,010 where the tokenizer counted 3,005.)"""
    if isinstance(prompt, str):
        return len(prompt.encode()) + ESTIMATE_TOKENS_PER_PROMPT
    size = sum(len(m.model_dump_json(exclude_none=True).encode()) for m in prompt)
    return size + ESTIMATE_TOKENS_PER_MESSAGE * len(prompt) + ESTIMATE_TOKENS_PER_PROMPT


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
    balancer: Balancer
    service_id: int | None = None
    default_ttl_s: int = 300
    max_ttl_s: int = 3600
    clock: Callable[[], float] = time.time
    _issued: OrderedDict[bytes, None] = field(default_factory=OrderedDict, repr=False)
    #: The quotes signed lately (the console's "quotes issued").
    recent: RecentQuotes = field(default_factory=RecentQuotes, repr=False)

    async def quote(self, req: QuoteRequest) -> QuoteResponse:
        service_id = self._service(req.service_id)
        terms = self.offer.model(req.model)
        if terms is None or req.model not in {m.id for m in self.balancer.models()}:
            raise ModelNotFoundError(req.model)
        context, output = self._limits(req.model, terms.context_length, terms.max_output_tokens)
        if req.max_tokens > output:
            raise InvalidRequestError(
                f"max_tokens {req.max_tokens} is above this operator's limit of {output} "
                f"for {req.model!r}.", code="max_tokens_above_limit", param="max_tokens")
        request_text = json.dumps(req.request, separators=(",", ":"))
        pieces, exact, per_choice = _prompt_pieces(req.job_index,
                                                   JobInputs(req.model, req.max_tokens, request_text))
        counts, how = await self._count(req.model, pieces) if pieces else ([], "tokenizer")
        _check_context(counts + exact, per_choice, context)
        prompt_tokens = sum(counts) + sum(exact)
        price = terms.price_for(prompt_tokens, req.max_tokens)
        inputs = encode_inputs(req.model, req.max_tokens, request_text)
        ttl = min(req.ttl_s or self.default_ttl_s, self.max_ttl_s)
        now = int(self.clock())
        details = JobQuoteDetails(requester=req.requester, service_id=service_id, job_index=req.job_index,
                                  price=price, timestamp=now, expiry=now + ttl,
                                  inputs_hash=inputs_hash(inputs))
        details = self._unused(details)
        signed = sign_job_quote(self.account, details, chain_id=self.chain_id, tangle=self.tangle)
        self.recent.add({
            "time": self.clock(), "service_id": service_id, "job_index": req.job_index, "model": req.model,
            "prompt_tokens": prompt_tokens, "max_tokens": req.max_tokens, "token_count": how,
            "price_wei": str(price), "expiry": details.expiry, "requester": req.requester,
        })
        log.info("quote.signed", service_id=service_id, job_index=req.job_index, model=req.model,
                 prompt_tokens=prompt_tokens, max_tokens=req.max_tokens, price_wei=price, token_count=how)
        return QuoteResponse(
            quote=SignedQuote.model_validate(signed.to_json()), price_wei=str(price),
            prompt_tokens=prompt_tokens, completion_tokens=req.max_tokens, token_count=how,
            inputs="0x" + inputs.hex(),
        )

    def recent_quotes(self, limit: int) -> list[dict[str, Any]]:
        """The quotes this node signed lately, newest first (the console's ``QuoteLog``)."""
        return self.recent.recent_quotes(limit)

    def _service(self, asked: int | None) -> int:
        if asked is None:
            if self.service_id is None:
                raise InvalidRequestError("service_id is required.", param="service_id")
            return self.service_id
        if self.service_id is not None and asked != self.service_id:
            raise InvalidRequestError(f"This operator answers service {self.service_id}, not {asked}.",
                                      code="wrong_service", param="service_id")
        return asked

    def _limits(self, model: str, context: int, output: int) -> tuple[int, int]:
        """(context, output) limits a job of ``model`` is held to: the offer's, lowered by every
        loaded node serving it (the job may be routed to any of them)."""
        for node in self.balancer.nodes():
            if not node.client.serves(model):
                continue
            card = node.client.model_info(model)
            context = min(context, card.context_length)
            output = min(output, card.max_output_length or card.context_length, card.context_length)
        return context, output

    async def _count(self, model: str, pieces: list[str | list[ChatMessage]]) -> tuple[list[int], TokenCount]:
        """Tokens of each piece, with the first node of ``model`` that has a tokenizer, else the
        estimate."""
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
                return [c for c in counts if c is not None], "tokenizer"
        return [estimate_tokens(piece) for piece in pieces], "estimate"

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


def _prompt_pieces(job_index: int, inputs: JobInputs) -> tuple[list[str | list[ChatMessage]], list[int], int]:
    """The prompt parts to count, the token counts known exactly (embedding inputs given as token
    ids), and the tokens each choice may generate (0 for embeddings), after the checks and the
    clamp the daemon applies to the job."""
    if job_index == 0:
        chat = prepare_chat(inputs)
        return [list(chat.messages)], [], chat.requested_max_tokens() or 0
    if job_index == 1:
        completion = prepare_completion(inputs)
        return list(completion.prompts()), [], completion.max_tokens or 0
    request = prepare_embeddings(inputs)
    texts = request.texts()
    if texts is not None:
        return list(texts), [], 0
    return [], [len(ids) for ids in request.token_lists() or []], 0


def _check_context(prompt_tokens: list[int], per_choice: int, context: int) -> None:
    """Refuse (before signing: nothing is paid) a job one of whose prompts, with the tokens its
    choices may generate, does not fit the model's context."""
    longest = max(prompt_tokens, default=0)
    if longest + per_choice > context:
        wanted = f"{longest} prompt tokens" + (f" + {per_choice} output tokens" if per_choice else "")
        raise ContextLengthExceededError(
            f"{wanted} do not fit this model's context of {context} tokens; shorten the prompt or "
            "lower max_tokens.", param="messages")


def quoter_from_settings(settings: Settings, balancer: Balancer, account: LocalAccount,
                         chain_id: int) -> Quoter:
    """A :class:`Quoter` with the prices ``register`` would put in the offer."""
    offer = offer_from_nodes(settings.nodes, "", loaded={info.id: info for info in balancer.models()})
    return Quoter(account=account, chain_id=chain_id, tangle=settings.tangle_contract, offer=offer,
                  balancer=balancer, service_id=settings.service_id)


def quotes_from_settings(settings: Settings, balancer: Balancer, account: LocalAccount,
                         chain_id: int) -> Quoter | None:
    """:func:`quoter_from_settings`, or None when the configured nodes cannot make an offer (e.g.
    more models than fit on chain): quotes stay disabled, with a warning, rather than stopping
    the daemon."""
    try:
        quoter = quoter_from_settings(settings, balancer, account, chain_id)
    except BlueprintError as exc:
        log.warning("quotes.disabled", reason=exc.message)
        return None
    log.info("quotes.enabled", operator=account.address, models=[m.model for m in quoter.offer.models])
    return quoter
