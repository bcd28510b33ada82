"""Who answers a job when a service has several operators: one rule every daemon computes alone.

Why: every operator of a service sees every ``JobSubmitted``, and with one required result the
first ``submitResult`` completes the job (a later one reverts). Computing every job everywhere
multiplies the GPU work by the number of operators; answering a job for a model one does not
serve completes it with an error. So each daemon ranks the operators that can answer a job from
facts all of them read the same way from the chain, without talking to each other:

* the candidates: the service's operators whose on-chain offer includes the job's model, and for
  a quote-paid job (``JobSubmittedFromQuote``) only the quoted operators among them (the chain
  accepts a result of such a job from a quoted operator alone);
* the order: rendezvous (highest-random-weight) hashing. Each candidate's score is
  ``keccak256(uint64 serviceId || uint64 callId || address operator)`` read as a 256-bit
  big-endian integer (the ``||`` are plain byte concatenation: 8 + 8 + 20 bytes); the highest
  score ranks first, ties (never seen in practice) by the lower address. Optionally weighted:
  with weights, the score is ``-w / ln(u)`` where ``u = (top 53 bits of the hash + 0.5) / 2**53``,
  so an operator with twice the weight ranks first about twice as often;
* the schedule: the first in the ranking computes at once; the k-th (0-based) takes over when no
  result has landed ``k x takeover_after_s`` after the job was seen. Its patience for capacity
  ends when the next one takes over; the last in the ranking is the one that answers with an
  error when nothing else worked.

Rendezvous hashing moves only the jobs of an operator that joins or leaves, and needs no shared
state: adding an operator to the service changes the owner of about 1/n of future jobs.

This module is pure (no I/O): the daemon supplies the offers and the quoted operators.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from eth_utils import keccak, to_bytes, to_checksum_address

_TOP_BITS = 53


def _address_bytes(address: str) -> bytes:
    raw = to_bytes(hexstr=address)
    if len(raw) != 20:
        raise ValueError(f"not an address: {address!r}")
    return raw


def score(service_id: int, call_id: int, operator: str) -> int:
    """The operator's rendezvous hash for one job (a 256-bit integer)."""
    data = service_id.to_bytes(8, "big") + call_id.to_bytes(8, "big") + _address_bytes(operator)
    return int.from_bytes(keccak(data), "big")


def weighted_score(hash_value: int, weight: float) -> float:
    """``-w / ln(u)``: higher is better; a zero weight never ranks above a positive one."""
    if weight <= 0:
        return 0.0
    u = ((hash_value >> (256 - _TOP_BITS)) + 0.5) / float(1 << _TOP_BITS)
    return -weight / math.log(u)


def rank(service_id: int, call_id: int, operators: Iterable[str],
         weights: Mapping[str, float] | None = None) -> tuple[str, ...]:
    """The operators in the order they answer ``call_id`` (checksummed, duplicates dropped)."""
    unique = sorted({to_checksum_address(op) for op in operators}, key=str.lower)
    scores = {op: score(service_id, call_id, op) for op in unique}
    if weights is None:
        return tuple(sorted(unique, key=lambda op: (-scores[op], op.lower())))
    norm = {to_checksum_address(op): float(w) for op, w in weights.items()}
    values = {op: weighted_score(scores[op], norm.get(op, 1.0)) for op in unique}
    return tuple(sorted(unique, key=lambda op: (-values[op], op.lower())))


def inverse_price_weights(prices: Mapping[str, int]) -> dict[str, float]:
    """Weights from completion prices: the cheapest gets 1, one twice as dear 0.5; a free offer
    counts as the cheapest. All free (or one operator): all equal."""
    paid = [p for p in prices.values() if p > 0]
    if not paid:
        return dict.fromkeys(prices, 1.0)
    cheapest = min(paid)
    return {op: 1.0 if p <= 0 else cheapest / p for op, p in prices.items()}


def candidates(model: str, offers: Mapping[str, Collection[str]],
               quoted: Collection[str] = ()) -> list[str]:
    """Operators that may answer a job for ``model``: those whose offer includes it, and when the
    job was paid by quotes, only the quoted ones among them."""
    able = [op for op, models in offers.items() if model in models]
    if not quoted:
        return able
    allowed = {q.lower() for q in quoted}
    return [op for op in able if op.lower() in allowed]


@dataclass(frozen=True, slots=True)
class Assignment:
    """One job's ranking seen from one operator (``me``)."""

    service_id: int
    call_id: int
    ranking: tuple[str, ...]
    me: str

    @property
    def position(self) -> int | None:
        """0 for the responsible operator, k for the k-th stand-by, None when not a candidate."""
        mine = self.me.lower()
        for index, op in enumerate(self.ranking):
            if op.lower() == mine:
                return index
        return None

    @property
    def eligible(self) -> bool:
        return self.position is not None

    @property
    def responsible(self) -> str | None:
        return self.ranking[0] if self.ranking else None

    @property
    def is_last(self) -> bool:
        """Whether nobody comes after us: then we answer even with an error."""
        return self.position is not None and self.position == len(self.ranking) - 1

    def takeover_after(self, takeover_after_s: float) -> float:
        """Seconds after the job was seen when we start on it (0 when responsible)."""
        if self.position is None:
            raise ValueError("not a candidate for this job")
        return self.position * takeover_after_s

    def give_up_after(self, takeover_after_s: float, last_patience_s: float) -> float:
        """Seconds after the job was seen when we stop waiting for capacity: when the next one
        takes over, or for the last in the ranking ``last_patience_s`` after our own start."""
        start = self.takeover_after(takeover_after_s)
        if self.is_last:
            return start + max(last_patience_s, takeover_after_s)
        return start + takeover_after_s


def assign(service_id: int, call_id: int, model: str, offers: Mapping[str, Collection[str]], me: str, *,
           quoted: Collection[str] = (), weights: Mapping[str, float] | None = None) -> Assignment:
    """Rank the candidates of one job and place ``me`` in that ranking."""
    ranking = rank(service_id, call_id, candidates(model, offers, quoted), weights)
    return Assignment(service_id, call_id, ranking, to_checksum_address(me))
