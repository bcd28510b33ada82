"""The assignment rule (rendezvous hashing over (serviceId, callId, operator)): deterministic,
balanced, minimally disrupted by membership changes, weighted on request, restricted to the
operators offering the model and, for quote-paid jobs, to the quoted ones."""

from __future__ import annotations

from collections import Counter

import pytest
from eth_abi.packed import encode_packed
from eth_utils import keccak, to_checksum_address

from blueprint.tangle.assignment import (
    Assignment,
    assign,
    candidates,
    inverse_price_weights,
    rank,
    score,
)

OPS = [to_checksum_address(f"0x{i:040x}") for i in (0xA1, 0xB2, 0xC3, 0xD4)]
A, B, C, D = OPS


def test_score_is_keccak_of_the_packed_ids_and_address() -> None:
    # What another implementation must compute: keccak256(abi.encodePacked(uint64, uint64, address)).
    packed = encode_packed(["uint64", "uint64", "address"], [3, 2**40 + 5, B])
    assert score(3, 2**40 + 5, B) == int.from_bytes(keccak(packed), "big")
    assert score(3, 5, B) != score(4, 5, B) != score(3, 6, B)


def test_rank_is_deterministic_and_independent_of_input_order_and_case() -> None:
    for call_id in range(50):
        first = rank(1, call_id, OPS)
        assert rank(1, call_id, reversed(OPS)) == first
        assert rank(1, call_id, [op.lower() for op in OPS] + [A]) == first
        assert sorted(first) == sorted(OPS)
        assert first == tuple(sorted(OPS, key=lambda op: -score(1, call_id, op)))


def test_jobs_spread_evenly_over_operators() -> None:
    firsts = Counter(rank(7, call_id, OPS[:3])[0] for call_id in range(3000))
    assert set(firsts) == set(OPS[:3])
    assert all(900 <= n <= 1100 for n in firsts.values()), firsts


def test_an_operator_leaving_moves_only_its_own_jobs() -> None:
    for call_id in range(500):
        before = rank(7, call_id, OPS)
        after = rank(7, call_id, [op for op in OPS if op != C])
        assert after == tuple(op for op in before if op != C)  # the others keep their order


def test_weights_shift_the_share_of_first_places() -> None:
    weights = {A: 2.0, B: 1.0, C: 1.0}
    firsts = Counter(rank(9, call_id, OPS[:3], weights)[0] for call_id in range(4000))
    assert 1800 <= firsts[A] <= 2200, firsts  # about half
    assert all(850 <= firsts[op] <= 1150 for op in (B, C)), firsts
    never = Counter(rank(9, call_id, OPS[:2], {A: 0.0, B: 1.0})[0] for call_id in range(200))
    assert never == {B: 200}


def test_inverse_price_weights() -> None:
    assert inverse_price_weights({A: 10, B: 20, C: 0}) == {A: 1.0, B: 0.5, C: 1.0}
    assert inverse_price_weights({A: 5, B: 5}) == {A: 1.0, B: 1.0}
    assert inverse_price_weights({A: 0, B: 0}) == {A: 1.0, B: 1.0}


def test_candidates_offer_the_model_and_are_quoted_when_quotes_paid() -> None:
    offers = {A: {"m1"}, B: {"m1", "m2"}, C: {"m2"}}
    assert candidates("m1", offers) == [A, B]
    assert candidates("m2", offers) == [B, C]
    assert candidates("m3", offers) == []
    assert candidates("m2", offers, quoted=[C.lower()]) == [C]
    assert candidates("m1", offers, quoted=[C]) == []  # quoted but not offering: nobody


@pytest.mark.parametrize("takeover", [5.0, 0.5])
def test_assignment_positions_and_schedule(takeover: float) -> None:
    offers = {A: {"m"}, B: {"m"}, C: {"m"}, D: {"x"}}
    ranking = rank(2, 11, [A, B, C])
    seats = [assign(2, 11, "m", offers, me) for me in ranking]
    assert [s.position for s in seats] == [0, 1, 2]
    assert [s.responsible for s in seats] == [ranking[0]] * 3
    assert [s.is_last for s in seats] == [False, False, True]
    assert [s.takeover_after(takeover) for s in seats] == [0.0, takeover, 2 * takeover]
    # patience ends when the next one starts; the last waits its own patience before an error
    assert [s.give_up_after(takeover, 60.0) for s in seats] == [takeover, 2 * takeover, 2 * takeover + 60.0]
    outsider = assign(2, 11, "m", offers, D)
    assert outsider.position is None and not outsider.eligible and not outsider.is_last
    with pytest.raises(ValueError):
        outsider.takeover_after(takeover)
    alone = Assignment(2, 11, (A,), A.lower())
    assert alone.position == 0 and alone.is_last and alone.give_up_after(takeover, 60.0) == 60.0
