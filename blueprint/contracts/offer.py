"""The operator's offer: what ``LlmServiceManager.onRegister`` decodes from the registration
inputs, and what ``updateOffer`` takes.

Wire format (must match ``contracts/LlmServiceManager.sol``)::

    abi.encode(bytes32 OFFER_TAG, string endpoint,
               (string model, uint32 contextLength, uint32 maxOutputTokens,
                uint256 pricePerPromptToken, uint256 pricePerCompletionToken)[] models)

``OFFER_TAG = keccak256("tangle-llm-blueprint.offer.v1")`` tells an offer apart from tnt-core's
``abi.encode(OperatorPreferences)``, which Tangle sends instead when there are no registration
inputs and on ``updateOperatorPreferences``. Prices are wei (of the native token) per token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from eth_utils import keccak

from blueprint.errors import InvalidRequestError
from blueprint.llm.model_files import config_context_length

if TYPE_CHECKING:
    from blueprint.llm.config import NodeConfig
    from blueprint.llm.types import ModelInfo

OFFER_TAG = keccak(text="tangle-llm-blueprint.offer.v1")
MODEL_TUPLE = "(string,uint32,uint32,uint256,uint256)"
OFFER_TYPES = ("bytes32", "string", MODEL_TUPLE + "[]")
#: Limits the contract enforces (kept equal to its constants).
MAX_MODELS = 16
MAX_MODEL_ID_BYTES = 96
MAX_ENDPOINT_BYTES = 256
UINT32_MAX = 2**32 - 1
UINT96_MAX = 2**96 - 1


@dataclass(frozen=True, slots=True)
class ModelOffer:
    """One model an operator serves on chain, with its limits and wei-per-token prices."""

    model: str
    context_length: int
    max_output_tokens: int
    price_per_prompt_token: int = 0
    price_per_completion_token: int = 0

    def validate(self, index: int = 0) -> None:
        """The same rules as the contract's ``InvalidModelOffer(index)``."""
        size = len(self.model.encode())
        if not 0 < size <= MAX_MODEL_ID_BYTES:
            raise InvalidRequestError(f"model {index}: id must be 1..{MAX_MODEL_ID_BYTES} bytes")
        if not 1 <= self.max_output_tokens <= UINT32_MAX:
            raise InvalidRequestError(f"model {self.model!r}: max_output_tokens must be >= 1")
        if not self.max_output_tokens <= self.context_length <= UINT32_MAX:
            raise InvalidRequestError(f"model {self.model!r}: context_length must be >= max_output_tokens")
        for name in ("price_per_prompt_token", "price_per_completion_token"):
            if not 0 <= getattr(self, name) <= UINT96_MAX:
                raise InvalidRequestError(f"model {self.model!r}: {name} must fit in uint96 wei")

    def as_tuple(self) -> tuple[str, int, int, int, int]:
        return (self.model, self.context_length, self.max_output_tokens,
                self.price_per_prompt_token, self.price_per_completion_token)

    def price_for(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Wei for a request of this many prompt and (at most) completion tokens."""
        return (prompt_tokens * self.price_per_prompt_token
                + completion_tokens * self.price_per_completion_token)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "context_length": self.context_length,
            "max_output_tokens": self.max_output_tokens,
            "price_per_prompt_token_wei": str(self.price_per_prompt_token),
            "price_per_completion_token_wei": str(self.price_per_completion_token),
        }


@dataclass(frozen=True, slots=True)
class Offer:
    """An operator's whole offer: its public HTTP endpoint and its models."""

    endpoint: str
    models: tuple[ModelOffer, ...] = field(default_factory=tuple)

    def validate(self) -> None:
        if len(self.endpoint.encode()) > MAX_ENDPOINT_BYTES:
            raise InvalidRequestError(f"endpoint longer than {MAX_ENDPOINT_BYTES} bytes")
        if len(self.models) > MAX_MODELS:
            raise InvalidRequestError(f"{len(self.models)} models offered, at most {MAX_MODELS} fit on chain")
        seen: set[str] = set()
        for index, model in enumerate(self.models):
            model.validate(index)
            if model.model in seen:
                raise InvalidRequestError(f"model {model.model!r} offered twice")
            seen.add(model.model)

    def model(self, model_id: str) -> ModelOffer | None:
        return next((m for m in self.models if m.model == model_id), None)

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "models": [m.to_json() for m in self.models]}


def encode_offer(offer: Offer) -> bytes:
    """The registration inputs for ``registerOperator`` (validated first)."""
    offer.validate()
    return abi_encode(list(OFFER_TYPES), [OFFER_TAG, offer.endpoint, [m.as_tuple() for m in offer.models]])


def decode_offer(data: bytes) -> Offer:
    """Inverse of :func:`encode_offer`; raises InvalidRequestError on anything else."""
    try:
        tag, endpoint, models = abi_decode(list(OFFER_TYPES), bytes(data))
    except (DecodingError, ValueError, OverflowError) as exc:
        raise InvalidRequestError(f"not an offer payload: {exc}") from None
    if tag != OFFER_TAG:
        raise InvalidRequestError("not an offer payload: wrong tag")
    return Offer(endpoint=endpoint, models=tuple(ModelOffer(*m) for m in models))


def offer_from_view(raw: Sequence[Any]) -> tuple[str, Offer, int]:
    """``(operator, offer, updatedAt)`` from the manager's ``OperatorOffer`` struct as web3 returns it."""
    operator, endpoint, models, updated_at = raw
    return operator, Offer(endpoint=endpoint, models=tuple(ModelOffer(*m) for m in models)), int(updated_at)


def build_offer(endpoint: str, models: Iterable[ModelOffer]) -> Offer:
    offer = Offer(endpoint=endpoint, models=tuple(models))
    offer.validate()
    return offer


#: Context length offered for a node that declares none.
DEFAULT_CONTEXT = 2048


def offer_from_nodes(nodes: Iterable[NodeConfig], public_url: str, *, prompt_price_wei: int = 0,
                     completion_price_wei: int = 0, loaded: Mapping[str, ModelInfo] | None = None) -> Offer:
    """One model entry per distinct model of the configured nodes (largest limits win); prices
    from each node's ``options.price_per_prompt_token_wei`` / ``price_per_completion_token_wei``,
    else the defaults given. ``register`` offers this on chain and the quoter prices with it.

    Limits are the model's real ones, never a default a model may not have: ``loaded`` (the
    running engines' cards, by model id) when given, else the node's declared ``context_length``,
    else its local model directory's ``config.json``; :data:`DEFAULT_CONTEXT` only when nothing
    says (a remote node not yet asked)."""
    models: dict[str, ModelOffer] = {}
    for node in nodes:
        card = (loaded or {}).get(node.model)
        if card is not None:
            context = card.context_length
            output = min(card.max_output_length or context, context)
        else:
            context = node.context_length or config_context_length(node.path) or DEFAULT_CONTEXT
            output = min(node.max_output_tokens or context, context)
        prompt = int(node.options.get("price_per_prompt_token_wei", prompt_price_wei))
        completion = int(node.options.get("price_per_completion_token_wei", completion_price_wei))
        known = models.get(node.model)
        if known is not None:
            context, output = max(context, known.context_length), max(output, known.max_output_tokens)
        models[node.model] = ModelOffer(node.model, context, output, prompt, completion)
    return build_offer(public_url, models.values())


#: Gas the manager may spend in ``onRegister`` with room to spare under the 500k hook stipend.
REGISTER_GAS_BUDGET = 300_000
_SSTORE = 22_200
_REGISTER_BASE_GAS = 140_000  # measured: ~136k with record, list entry, decode self-call, events


def _slots(text: str) -> int:
    size = len(text.encode())
    return 1 if size <= 31 else 1 + (size + 31) // 32


def estimated_register_gas(offer: Offer) -> int:
    """A conservative estimate of ``onRegister``'s gas for ``offer``: a fixed part plus one fresh
    storage slot per 32 bytes of endpoint and model id and one per model's packed terms."""
    slots = _slots(offer.endpoint) + sum(_slots(m.model) + 1 for m in offer.models)
    return _REGISTER_BASE_GAS + _SSTORE * slots


def split_for_registration(offer: Offer, budget: int = REGISTER_GAS_BUDGET) -> tuple[Offer, bool]:
    """The part of ``offer`` to send inside ``registerOperator`` so that ``onRegister`` stays
    within ``budget``, and whether the full offer must follow through ``updateOffer``."""
    models: list[ModelOffer] = []
    for model in offer.models:
        if estimated_register_gas(Offer(offer.endpoint, (*models, model))) > budget:
            break
        models.append(model)
    head = Offer(offer.endpoint, tuple(models))
    return head, len(models) < len(offer.models)
