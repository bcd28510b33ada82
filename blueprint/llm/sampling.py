"""Sampling parameters, normalized once from a chat or text-completion request.

Engines should not each re-derive "what does temperature 0 mean" or "which of max_tokens and
max_completion_tokens wins": :func:`sampling_params` turns a validated request into one frozen
:class:`SamplingParams` with neutral values for everything the client left out (OpenAI's
defaults: temperature 1, top_p 1, no penalties).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blueprint.errors import InvalidRequestError
from blueprint.llm.types import ChatCompletionRequest, CompletionRequest


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What an engine needs to pick the next token and to know when to stop.

    ``top_k`` 0 and ``min_p`` 0 mean "off"; ``temperature`` 0 means greedy decoding.
    ``max_tokens`` is what the client asked for (None: as much as fits); the engine caps it.
    ``ignore_eos`` keeps generating past the end-of-sequence token (benchmarks use it so that every
    request produces exactly ``max_tokens`` tokens); clients cannot set it over the wire.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    n: int = 1
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_filtering(self) -> bool:
        """Whether top-k / top-p / min-p truncate the distribution (costs a sort)."""
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0

    @property
    def has_penalties(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty or self.repetition_penalty != 1.0)


def _logit_bias(raw: dict[str, float] | None) -> dict[int, float]:
    if not raw:
        return {}
    bias: dict[int, float] = {}
    for key, value in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequestError(f"logit_bias keys must be token ids, got {key!r}.",
                                      param="logit_bias") from None
        if token < 0:
            raise InvalidRequestError(f"logit_bias token id {token} is negative.", param="logit_bias")
        if not -100.0 <= value <= 100.0:
            raise InvalidRequestError(f"logit_bias values must lie in [-100, 100], got {value}.",
                                      param="logit_bias")
        bias[token] = float(value)
    return bias


def sampling_params(request: ChatCompletionRequest | CompletionRequest, *,
                    ignore_eos: bool = False) -> SamplingParams:
    """The request's sampling knobs with defaults filled in (see the module docstring)."""
    top_k = request.top_k if request.top_k is not None else 0
    return SamplingParams(
        temperature=1.0 if request.temperature is None else float(request.temperature),
        top_p=1.0 if request.top_p is None else float(request.top_p),
        top_k=max(0, top_k),  # vLLM's -1 and 0 both mean "off"
        min_p=request.min_p or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        presence_penalty=request.presence_penalty or 0.0,
        repetition_penalty=request.repetition_penalty or 1.0,
        logit_bias=_logit_bias(request.logit_bias),
        seed=request.seed,
        stop=tuple(request.stop_list()),
        max_tokens=request.requested_max_tokens(),
        n=request.n,
        ignore_eos=ignore_eos,
    )
