"""The daemon's side of the multi-operator rule: for one job, where we stand and when we act.

:mod:`blueprint.tangle.assignment` is the pure rule; this module feeds it what the chain says
(the offers of :class:`~blueprint.contracts.offer_book.OfferBook`, the quoted operators of a
quote-paid job) and turns the ranking into wall-clock times from when the job was first seen
(kept in the ledger, so a restarted daemon keeps the same schedule):

* ``start``: when we begin (at once when responsible; k x ``takeover_after_s`` for the k-th);
* ``give_up``: when we stop waiting for capacity and leave the job to the next operator (the
  last one instead answers with an error then, after ``last_patience_s`` of its own);
* ``end``: when the whole ranking has had its turn: a job we left is then given up for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from blueprint.errors import BlueprintError
from blueprint.jobs.codec import decode_inputs
from blueprint.tangle.assignment import Assignment, assign, inverse_price_weights
from blueprint.tangle.types import JobCall

log = structlog.get_logger(__name__)


class Offers(Protocol):
    """What the assigner reads from the offer book."""

    def models_by_operator(self) -> dict[str, frozenset[str]]: ...

    def completion_prices(self, model: str) -> dict[str, int]: ...


class QuotedOperators(Protocol):
    async def quoted_operators(self, call_id: int) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class JobPlan:
    """One job's schedule for this operator (wall-clock seconds, like the ledger's ``seen_at``)."""

    assignment: Assignment | None
    model: str | None
    start: float
    give_up: float
    end: float
    reason: str = ""

    @property
    def eligible(self) -> bool:
        return self.assignment is None or self.assignment.eligible

    @property
    def position(self) -> int:
        return 0 if self.assignment is None else (self.assignment.position or 0)

    @property
    def last(self) -> bool:
        return self.assignment is None or self.assignment.is_last

    def describe(self) -> str:
        if self.assignment is None:
            return "single operator"
        a = self.assignment
        if a.position is None:
            return self.reason or f"not a candidate ({len(a.ranking)} candidates)"
        return f"rank {a.position + 1} of {len(a.ranking)}"


def _model_of(call: JobCall) -> str | None:
    try:
        return decode_inputs(call.inputs).model or None
    except BlueprintError:
        return None


class Assigner:
    """Plans jobs for operator ``me``.

    Args:
        offers: the service's offers (models per operator, prices).
        me: our operator address.
        quoted: reads the quoted operators of a quote-paid job whose log did not carry them.
        serves: whether our own nodes serve a model (an offer we cannot honour is not ours).
        takeover_after_s: ``[jobs] takeover_after_s``.
        last_patience_s: how long the last in the ranking waits for capacity before an error.
        weighting: ``equal`` or ``inverse_price`` (every operator of a service must use the same).
    """

    def __init__(self, offers: Offers, me: str, *, quoted: QuotedOperators, serves: Callable[[str], bool],
                 takeover_after_s: float, last_patience_s: float, weighting: str = "equal") -> None:
        self.offers = offers
        self.me = me
        self.quoted = quoted
        self.serves = serves
        self.takeover_after_s = takeover_after_s
        self.last_patience_s = last_patience_s
        self.weighting = weighting

    async def plan(self, call: JobCall, seen_at: float | None) -> JobPlan:
        seen = seen_at if seen_at is not None else time.time()
        model = _model_of(call)
        offers = self.offers.models_by_operator()
        quoted: tuple[str, ...] = ()
        if call.from_quote:
            quoted = call.quoted_operators or await self.quoted.quoted_operators(call.call_id)
        if model is None:
            # malformed inputs (no manager rejected them): every candidate sees the same bytes,
            # so let the ranking over all of them pick the one that answers the error
            offers = {op: frozenset({""}) for op in offers}
            model_key = ""
        else:
            model_key = model
        weights = None
        if self.weighting == "inverse_price" and model is not None:
            prices = self.offers.completion_prices(model)
            weights = inverse_price_weights(prices) if prices else None
        assignment = assign(call.service_id, call.call_id, model_key, offers, self.me, quoted=quoted,
                            weights=weights)
        reason = ""
        crowded = len(assignment.ranking) > 1
        if assignment.eligible and model is not None and crowded and not self.serves(model):
            # offered on chain (or no offers on chain) but not served by our nodes: leave it to
            # the others rather than answer "model not found" for a job someone else can serve
            reason = f"our nodes do not serve {model!r}"
            others = tuple(op for op in assignment.ranking if op != assignment.me)
            assignment = Assignment(assignment.service_id, assignment.call_id, others, assignment.me)
        if not assignment.eligible:
            if not reason:
                reason = (f"not quoted for this job ({len(quoted)} quoted)" if quoted
                          else f"we do not offer {model!r}")
            return JobPlan(assignment, model, seen, seen, seen, reason)
        t = self.takeover_after_s
        start = seen + assignment.takeover_after(t)
        give_up = seen + assignment.give_up_after(t, self.last_patience_s)
        end = seen + (len(assignment.ranking) - 1) * t + max(self.last_patience_s, t) + t
        return JobPlan(assignment, model, start, give_up, end)


def single_operator_plan(call: JobCall, last_patience_s: float, now: float | None = None) -> JobPlan:
    """The plan without an assigner (one operator, tests): ours at once, patient until an error."""
    start = time.time() if now is None else now
    return JobPlan(None, _model_of(call), start, start + last_patience_s, start + last_patience_s)
