"""A small client for programs (a gateway, a script) that use this blueprint through the chain:
read which operators of a service serve which model at what price and where, submit a job
(optionally with an operator's signed quote) and wait for its answer.

Everything it knows comes from the chain: Tangle for membership and results, the blueprint's
``LlmServiceManager`` for the offers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount

from blueprint.contracts.manager import (
    OperatorOfferView,
    blueprint_manager,
    explain_revert,
    service_blueprint,
    service_offers,
)
from blueprint.contracts.offer import ModelOffer
from blueprint.devnet import setup
from blueprint.jobs.codec import decode_result_json, encode_inputs
from blueprint.tangle import abi
from blueprint.tangle.chain import ChainClient, TxRevertedError, logs_with_topic
from blueprint.tangle.quotes import SignedJobQuote


@dataclass(frozen=True, slots=True)
class Route:
    """One operator that serves a model: where to reach it and its terms."""

    operator: str
    endpoint: str
    terms: ModelOffer


class BlueprintClient:
    """Chain-side view and job submission for one service of the LLM blueprint."""

    def __init__(self, chain: ChainClient, service_id: int, *, manager: str | None = None) -> None:
        self.chain = chain
        self.service_id = service_id
        self._manager = manager

    async def manager(self) -> str:
        """The service's manager address, read once from Tangle (service -> blueprint -> manager)."""
        if self._manager is None:
            blueprint_id = await service_blueprint(self.chain, self.service_id)
            self._manager = await blueprint_manager(self.chain, blueprint_id)
        return self._manager

    async def operators(self) -> list[OperatorOfferView]:
        """The service's operators with their offers."""
        return await service_offers(self.chain, await self.manager(), self.service_id)

    async def routes(self, model: str) -> list[Route]:
        """The operators of the service that offer ``model``, cheapest completion price first."""
        found = []
        for view in await self.operators():
            terms = view.offer.model(model)
            if terms is not None:
                found.append(Route(view.operator, view.offer.endpoint, terms))
        return sorted(found, key=lambda r: (r.terms.price_per_completion_token,
                                            r.terms.price_per_prompt_token))

    async def submit(
        self,
        account: LocalAccount,
        job_index: int,
        model: str,
        max_tokens: int,
        request: dict[str, Any] | str,
        *,
        quote: SignedJobQuote | None = None,
        value: int = 0,
        inputs: bytes | None = None,
    ) -> int:
        """Submit a job and return its call id. With ``quote``, ``submitJobFromQuote`` pays the
        quoted price (``inputs`` must then be the exact bytes the quote was made for). A rejected
        job raises :class:`TxRevertedError` whose ``revert`` names the manager's reason."""
        payload = inputs if inputs is not None else encode_inputs(model, max_tokens, request)
        try:
            if quote is None:
                return await setup.submit_job(self.chain, account, self.service_id, job_index, payload,
                                              value=value)
            fn = self.chain.tangle.functions.submitJobFromQuote(
                self.service_id, job_index, payload, [quote.as_tuple()])
            receipt = await self.chain.send(account, fn, value=quote.details.price)
        except TxRevertedError as exc:
            raise TxRevertedError(explain_revert(exc.revert), tx_hash=exc.tx_hash, what=exc.what) from None
        logs = logs_with_topic(receipt, abi.JOB_SUBMITTED_FROM_QUOTE_TOPIC, self.chain.tangle_address)
        return int(logs[0].topics[2], 16)

    async def wait_for_result(self, call_id: int, timeout: float = 120.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The decoded response JSON of the first result for ``call_id`` (an OpenAI response or
        error object)."""
        result = await setup.wait_for_result(self.chain, self.service_id, call_id, timeout)
        try:
            return decode_result_json(result.output)
        except (ValueError, json.JSONDecodeError):
            return {"raw": "0x" + bytes(result.output).hex()}
