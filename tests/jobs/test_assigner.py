"""The daemon's plan for one job from the offers, the quotes and its own nodes: who it is for,
and when each candidate starts and gives up (wall clock from the job's first sighting)."""

from __future__ import annotations

from eth_utils import to_checksum_address

from blueprint.assigner import Assigner, single_operator_plan
from blueprint.jobs.codec import encode_inputs
from blueprint.tangle.assignment import rank
from blueprint.tangle.types import JobCall

A, B, C = (to_checksum_address(f"0x{i:040x}") for i in (0xA, 0xB, 0xC))
ZERO = "0x" + "00" * 32


class Offers:
    def __init__(self, models: dict[str, frozenset[str]], prices: dict[str, int] | None = None) -> None:
        self.models, self.prices = models, prices or {}

    def models_by_operator(self) -> dict[str, frozenset[str]]:
        return self.models

    def completion_prices(self, model: str) -> dict[str, int]:
        return {op: p for op, p in self.prices.items() if model in self.models[op]}


class Quoted:
    def __init__(self, operators: tuple[str, ...]) -> None:
        self.operators, self.asked = operators, 0

    async def quoted_operators(self, call_id: int) -> tuple[str, ...]:
        self.asked += 1
        return self.operators


def job(call_id: int, model: str = "m", *, from_quote: bool = False, quoted: tuple[str, ...] = (),
        inputs: bytes | None = None) -> JobCall:
    data = encode_inputs(model, 8, {"messages": []}) if inputs is None else inputs
    return JobCall(1, call_id, 0, A, data, 1, ZERO, 0, ZERO, from_quote, quoted)


def assigner(me: str, offers: Offers, quoted: Quoted | None = None, serves: bool = True) -> Assigner:
    return Assigner(offers, me, quoted=quoted or Quoted(()), serves=lambda _m: serves,
                    takeover_after_s=10.0, last_patience_s=60.0)


OFFERS = Offers({A: frozenset({"m"}), B: frozenset({"m", "x"}), C: frozenset({"x"})})


async def test_schedule_of_each_candidate() -> None:
    ranking = rank(1, 5, [A, B])
    first, second = [await assigner(op, OFFERS).plan(job(5), seen_at=1000.0) for op in ranking]
    assert (first.start, first.give_up, first.last) == (1000.0, 1010.0, False)
    assert (second.start, second.give_up, second.last) == (1010.0, 1070.0, True)
    assert first.end == second.end == 1000.0 + 10.0 + 60.0 + 10.0
    outsider = await assigner(C, OFFERS).plan(job(5), seen_at=1000.0)
    assert not outsider.eligible and outsider.describe() == "we do not offer 'm'"


async def test_quote_paid_job_only_for_the_quoted_read_from_chain_when_the_log_is_gone() -> None:
    quoted = Quoted((B,))
    plan = await assigner(A, OFFERS, quoted).plan(job(6, from_quote=True), seen_at=0.0)
    assert quoted.asked == 1 and not plan.eligible and "not quoted" in plan.reason
    plan = await assigner(B, OFFERS, quoted).plan(job(6, from_quote=True, quoted=(B,)), seen_at=0.0)
    assert quoted.asked == 1 and plan.position == 0 and plan.last  # the log carried the quoted list


async def test_an_offer_our_nodes_cannot_serve_is_left_to_the_others() -> None:
    plan = await assigner(A, OFFERS, serves=False).plan(job(7), seen_at=0.0)
    assert not plan.eligible and "do not serve" in plan.reason
    alone = Offers({A: frozenset({"m"})})
    plan = await assigner(A, alone, serves=False).plan(job(7), seen_at=0.0)
    assert plan.eligible and plan.last  # nobody else can: we answer (with the error)


async def test_malformed_inputs_are_answered_by_one_of_all_operators() -> None:
    plans = [await assigner(op, OFFERS).plan(job(8, inputs=b"junk"), seen_at=0.0) for op in (A, B, C)]
    assert sorted(p.position for p in plans) == [0, 1, 2]


async def test_inverse_price_weighting_is_applied() -> None:
    offers = Offers({A: frozenset({"m"}), B: frozenset({"m"})}, {A: 1, B: 1000})
    cheap = Assigner(offers, A, quoted=Quoted(()), serves=lambda _m: True, takeover_after_s=1.0,
                     last_patience_s=1.0, weighting="inverse_price")
    firsts = [(await cheap.plan(job(c), seen_at=0.0)).position for c in range(200)]
    assert firsts.count(0) > 180  # A is 1000 times cheaper: first almost always


def test_single_operator_plan_is_patient_and_last() -> None:
    plan = single_operator_plan(job(9), 30.0, now=50.0)
    assert (plan.start, plan.give_up, plan.last, plan.position) == (50.0, 80.0, True, 0)
