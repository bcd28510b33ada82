"""The SQLite ledger: state machine, idempotent intake, resume, cursor, reorg bookkeeping."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from pathlib import Path

import pytest

from blueprint.tangle.ledger import (
    ALLOWED,
    Cursor,
    IllegalTransitionError,
    JobState,
    Ledger,
    UnknownJobError,
)
from blueprint.tangle.types import JobCall

S = JobState


def job(call_id: int, block: int = 300, *, service_id: int = 1, block_hash: str | None = None,
        inputs: bytes = b"in") -> JobCall:
    return JobCall(
        service_id=service_id, call_id=call_id, job_index=0,
        caller="0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        inputs=inputs, block_number=block, block_hash=block_hash or f"0x{block:064x}", log_index=0,
        tx_hash=f"0x{call_id:064x}",
    )


async def test_pragmas_wal_and_normal(tmp_path: Path) -> None:
    led = await Ledger.open(tmp_path)
    await led.close()
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_record_seen_is_idempotent(ledger: Ledger) -> None:
    first = await ledger.record_seen([job(1), job(2)])
    assert [j.call_id for j in first] == [1, 2]
    again = await ledger.record_seen([job(1), job(2), job(3)])
    assert [j.call_id for j in again] == [3]
    assert (await ledger.counts())[S.SEEN] == 3
    record = await ledger.get(1, 1)
    assert record is not None and record.inputs == b"in" and record.seen_at is not None


async def test_full_life_and_timings(ledger: Ledger) -> None:
    await ledger.record_seen([job(1)])
    await ledger.mark_running(1, 1)
    answered = await ledger.mark_answered(1, 1, b"result")
    assert answered.result == b"result" and answered.result_hash and answered.result_hash.startswith("0x")
    submitted = await ledger.mark_submitted(1, 1, "0xABCD")
    assert submitted.submit_tx_hash == "0xabcd" and submitted.attempts == 1
    confirmed = await ledger.mark_confirmed(1, 1)
    assert confirmed.state is S.CONFIRMED
    assert confirmed.inputs is None and confirmed.result is None  # dropped once the chain has it
    assert confirmed.result_hash == answered.result_hash
    stamps = [confirmed.seen_at, confirmed.started_at, confirmed.answered_at, confirmed.submitted_at,
              confirmed.confirmed_at]
    assert all(s is not None for s in stamps) and stamps == sorted(stamps)


@pytest.mark.parametrize("current", list(JobState))
async def test_every_illegal_transition_raises(tmp_path: Path, current: JobState) -> None:
    paths = {  # how to reach each state from seen
        S.SEEN: [], S.RUNNING: [S.RUNNING], S.ANSWERED: [S.ANSWERED], S.SUBMITTED: [S.ANSWERED, S.SUBMITTED],
        S.CONFIRMED: [S.CONFIRMED], S.FAILED: [S.FAILED], S.ORPHANED: [S.ORPHANED],
        S.STANDBY: [S.STANDBY], S.TAKEN_OVER: [S.STANDBY, S.TAKEN_OVER],
        S.ANSWERED_BY_ANOTHER: [S.ANSWERED_BY_ANOTHER], S.SKIPPED: [S.SKIPPED],
    }
    async with await Ledger.open(tmp_path) as led:
        for n, target in enumerate(JobState):
            await led.record_seen([job(n)])
            for step in paths[current]:
                await led.transition(1, n, step, result=b"r", reason="x")
            if target in ALLOWED[current]:
                record = await led.transition(1, n, target, result=b"r", reason="x")
                assert record.state is target
            else:
                with pytest.raises(IllegalTransitionError):
                    await led.transition(1, n, target, result=b"r")
                assert (await led.get(1, n)).state is current  # type: ignore[union-attr]


async def test_unknown_job_and_batch_is_atomic(ledger: Ledger) -> None:
    with pytest.raises(UnknownJobError):
        await ledger.mark_running(1, 99)
    await ledger.record_seen([job(1), job(2)])
    await ledger.mark_failed(1, 2, "bad")
    with pytest.raises(IllegalTransitionError):
        await ledger.transition_many([(1, 1), (1, 2)], S.RUNNING)
    assert (await ledger.get(1, 1)).state is S.SEEN  # type: ignore[union-attr]


async def test_pending_on_start_survives_reopen(tmp_path: Path) -> None:
    led = await Ledger.open(tmp_path)
    await led.record_seen([job(i, block=300 + i) for i in range(6)], cursor=Cursor(310, "0x" + "aa" * 32))
    await led.mark_running(1, 1)
    await led.mark_answered(1, 2, b"r2")
    await led.mark_answered(1, 3, b"r3")
    await led.mark_submitted(1, 3, "0x01")
    await led.mark_confirmed(1, 4)
    await led.mark_failed(1, 5, "nope")
    await led.close()
    led = await Ledger.open(tmp_path)
    try:
        pending = await led.pending_on_start()
        assert [(r.call_id, r.state) for r in pending] == [
            (0, S.SEEN), (1, S.RUNNING), (2, S.ANSWERED), (3, S.SUBMITTED)]
        assert pending[2].result == b"r2"
        assert pending[0].to_job_call() == job(0, block=300)
        assert await led.get_cursor() == Cursor(310, "0x" + "aa" * 32)
        failed = await led.get(1, 5)
        assert failed is not None and failed.reason == "nope"
    finally:
        await led.close()


async def test_cursor_streams_and_blocks(ledger: Ledger) -> None:
    assert await ledger.get_cursor() is None
    await ledger.set_cursor(Cursor(5, "0xAA", 2), blocks=[(4, "0x04"), (5, "0xAA")], stream="a")
    assert await ledger.get_cursor("a") == Cursor(5, "0xaa", 2)
    assert await ledger.get_cursor("b") is None
    assert await ledger.block_hashes(10) == [(5, "0xaa"), (4, "0x04")]


async def test_block_history_is_pruned(tmp_path: Path) -> None:
    async with await Ledger.open(tmp_path, block_history=10) as led:
        await led.set_cursor(Cursor(100, "0x64"), blocks=[(n, hex(n)) for n in range(50, 101)])
        kept = await led.block_hashes(1000, limit=100)
        assert [n for n, _ in kept] == list(range(100, 90, -1))


async def test_rewind_orphans_unless_kept_and_orphans_come_back(ledger: Ledger) -> None:
    await ledger.record_seen([job(1, 300), job(2, 305), job(3, 306), job(4, 306, service_id=2)],
                             cursor=Cursor(306, "0x306"), blocks=[(300, "0x300"), (305, "0x305")])
    await ledger.mark_running(1, 3)
    orphaned = await ledger.rewind(Cursor(304, "0x304"), service_id=1, keep=[(1, 2)])
    assert orphaned == [(1, 3)]
    assert (await ledger.get(1, 3)).state is S.ORPHANED  # type: ignore[union-attr]
    assert (await ledger.get(1, 2)).state is S.SEEN  # type: ignore[union-attr]
    assert (await ledger.get(2, 4)).state is S.SEEN  # type: ignore[union-attr]  (other service)
    assert await ledger.get_cursor() == Cursor(304, "0x304")
    assert await ledger.block_hashes(1000) == [(300, "0x300")]
    # job 2 re-included in another block: no re-delivery, its block follows the chain
    assert await ledger.record_seen([job(2, 307, block_hash="0x" + "77" * 32)]) == []
    assert (await ledger.get(1, 2)).block_number == 307  # type: ignore[union-attr]
    # job 3 reappears: delivered again, as seen
    back = await ledger.record_seen([job(3, 308)])
    assert [j.call_id for j in back] == [3]
    assert (await ledger.get(1, 3)).state is S.SEEN  # type: ignore[union-attr]


async def test_scanned_range_orphans_jobs_missing_from_canonical_logs(ledger: Ledger) -> None:
    await ledger.record_seen([job(1, 300), job(2, 301), job(3, 302, service_id=2)])  # pushed earlier
    fresh = await ledger.record_seen([job(1, 300)], cursor=Cursor(301, "0x301"), scanned=(1, 300, 301))
    assert fresh == []
    assert (await ledger.get(1, 2)).state is S.ORPHANED  # type: ignore[union-attr]
    assert (await ledger.get(1, 1)).state is S.SEEN  # type: ignore[union-attr]
    assert (await ledger.get(2, 3)).state is S.SEEN  # type: ignore[union-attr]


async def test_orphan_if_in_block_checks_the_hash(ledger: Ledger) -> None:
    await ledger.record_seen([job(1, 300, block_hash="0x" + "11" * 32)])
    assert not await ledger.orphan_if_in_block(1, 1, "0x" + "22" * 32)
    assert await ledger.orphan_if_in_block(1, 1, "0x" + "11" * 32)
    assert not await ledger.orphan_if_in_block(1, 1, "0x" + "11" * 32)


async def test_concurrent_transitions_from_many_tasks_are_fast(ledger: Ledger) -> None:
    """200 jobs through four transitions each from concurrent tasks: no lost update, and the
    per-transition latency stays far below the daemon's 50 ms budget."""
    n = 200
    await ledger.record_seen([job(i, 300 + i) for i in range(n)], cursor=Cursor(500, "0x500"))
    latencies: list[float] = []

    async def life(call_id: int) -> None:
        for step in (S.RUNNING, S.ANSWERED, S.SUBMITTED, S.CONFIRMED):
            started = time.perf_counter()
            await ledger.transition(1, call_id, step, result=b"r" * 200, tx_hash="0x01")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(life(i) for i in range(n)))
    wall = time.perf_counter() - started
    assert (await ledger.counts())[S.CONFIRMED] == n
    p50 = statistics.median(latencies)
    print(f"ledger: {4 * n} transitions in {wall:.3f}s, per-call p50 {p50 * 1000:.2f} ms")
    assert wall < 10.0


async def test_a_version_1_ledger_is_migrated_in_place(tmp_path: Path) -> None:
    """A ledger written by the previous build (no answer columns) opens, keeps its jobs and
    cursor, and trusts its already confirmed answers (they were checked by that build)."""
    from blueprint.tangle import ledger as ledger_module

    v1_schema = "\n".join(line for line in ledger_module._SCHEMA.splitlines()
                           if "answer_" not in line and "runs INTEGER" not in line
                           and "taken_over_at" not in line)
    path = tmp_path / ledger_module.LEDGER_FILE
    db = sqlite3.connect(path)
    db.executescript(v1_schema)
    db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    db.execute("INSERT INTO cursor VALUES ('jobs', 300, '0xab', -1, 0)")
    for call_id, state in ((1, "confirmed"), (2, "seen")):
        db.execute(
            "INSERT INTO jobs (service_id, call_id, job_index, caller, inputs, block_number, block_hash, "
            "log_index, tx_hash, state, updated_at) "
            "VALUES (1, ?, 0, '0xc', x'00', 300, '0xab', 0, '0xt', ?, 0)",
            (call_id, state),
        )
    db.commit()
    db.close()

    led = await Ledger.open(tmp_path)
    try:
        assert await led.get_cursor() == Cursor(300, "0xab")
        done, todo = await led.get(1, 1), await led.get(1, 2)
        assert done is not None and done.state is S.CONFIRMED and done.answer_anchored
        assert todo is not None and todo.state is S.SEEN and not todo.answer_anchored
        assert todo.runs == 0
        await led.mark_running(1, 2)
        await led.mark_answered(1, 2, b"r")
        await led.mark_confirmed(1, 2, tx_hash="0xaa", answer=(301, "0xCD"))
        assert [r.call_id for r in await led.unanchored_answers(301)] == [2]
        assert await led.unanchored_answers(300) == []
        await led.anchor_answers([(1, 2)])
        assert await led.unanchored_answers(400) == []
        assert await led.unanchor_answers_above(300) == 1
        await led.reopen_lost_answers([(1, 2)], Cursor(299, "0x99"))
        assert (await led.get(1, 2)).state is S.ORPHANED  # type: ignore[union-attr]
        assert await led.get_cursor() == Cursor(299, "0x99")
    finally:
        await led.close()
    version = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(ledger_module.SCHEMA_VERSION),)


async def test_the_answer_watch_reads_a_partial_index(ledger: Ledger) -> None:
    """Every producer scan asks for the unanchored answers: that must not read every confirmed job.
    The query names its index (INDEXED BY), so it fails outright if the index were unusable."""
    sql = await ledger._run(lambda: ledger._db.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'jobs_answer_watch'").fetchone())
    assert sql is not None and "WHERE state = 'confirmed' AND answer_anchored = 0" in sql[0]
    await ledger.record_seen([job(1)])
    await ledger.mark_running(1, 1)
    await ledger.mark_answered(1, 1, b"r")
    await ledger.mark_confirmed(1, 1, tx_hash="0xaa", answer=(301, "0xcd"))
    assert [r.call_id for r in await ledger.unanchored_answers(301)] == [1]


async def test_multi_operator_states_resume_and_final_ones_drop_inputs(ledger: Ledger) -> None:
    await ledger.record_seen([job(1), job(2), job(3), job(4)])
    await ledger.transition(1, 1, S.STANDBY, reason="rank 1 of 3")
    await ledger.transition(1, 2, S.STANDBY)
    await ledger.transition(1, 2, S.TAKEN_OVER, reason="no result after 2.0s")
    await ledger.transition(1, 3, S.ANSWERED_BY_ANOTHER, reason="JobCompleted")
    await ledger.transition(1, 4, S.SKIPPED, reason="we do not offer 'm'")
    pending = {r.call_id: r.state for r in await ledger.pending_on_start(1)}
    assert pending == {1: S.STANDBY, 2: S.TAKEN_OVER}  # watched or owed after a restart
    for call_id in (3, 4):
        record = await ledger.get(1, call_id)
        assert record is not None and record.inputs is None and record.reason
    # a job we stood by for, then took over, runs like a fresh one
    assert (await ledger.mark_running(1, 2)).state is S.RUNNING
    # left at its deadline to the next operator: back to stand-by
    assert (await ledger.transition(1, 2, S.STANDBY, reason="left")).state is S.STANDBY


async def test_handler_starts_are_counted_for_the_poison_job_guard(ledger: Ledger) -> None:
    """Each ``running`` counts one handler start; a start cut short by a graceful stop is
    uncounted, so only runs the process died in count towards the guard."""
    await ledger.record_seen([job(1)])
    assert (await ledger.mark_running(1, 1)).runs == 1
    await ledger.transition(1, 1, S.SEEN, reason="requeued on restart")
    assert (await ledger.mark_running(1, 1)).runs == 2
    await ledger.forget_run(1, 1)
    assert (await ledger.get(1, 1)).runs == 1  # type: ignore[union-attr]


async def test_ledger_files_are_private(tmp_path: Path) -> None:
    """Row 10: the ledger holds pending prompts; it was created 0644. Files are 0600 in a 0700
    directory, whatever the umask."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        led = await Ledger.open(tmp_path / "data")
        await led.record_seen([job(1)])
        await led.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    files = list((tmp_path / "data").iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), \
        {f.name: oct(f.stat().st_mode) for f in files}


async def test_sharing_counts_follow_the_multi_operator_states(ledger: Ledger) -> None:
    """A job taken over stays counted as taken over after it runs and is answered; jobs another
    operator answered, skipped jobs and jobs on standby are counted per service."""
    await ledger.record_seen([job(call_id) for call_id in range(1, 6)])
    for call_id in (1, 2, 3, 4):
        await ledger.transition(1, call_id, S.STANDBY, reason="our turn in 5s")
    await ledger.transition(1, 1, S.TAKEN_OVER, reason="no result after 5s")
    await ledger.mark_running(1, 1)
    await ledger.transition(1, 2, S.ANSWERED_BY_ANOTHER, reason="JobCompleted")
    await ledger.transition(1, 3, S.SKIPPED, reason="model not offered")
    await ledger.transition(1, 5, S.STANDBY, reason="our turn in 5s")
    await ledger.transition(1, 5, S.TAKEN_OVER, reason="no result after 5s")
    await ledger.transition(1, 5, S.ANSWERED_BY_ANOTHER, reason="JobCompleted")  # its result landed late
    counts = await ledger.sharing_counts(1)
    assert counts == {"taken_over": 1, "answered_by_another": 2, "skipped": 1, "standby": 1}
    record = await ledger.get(1, 1)
    assert record is not None and record.state is S.RUNNING and record.taken_over_at is not None
    assert await ledger.sharing_counts(2) == dict.fromkeys(counts, 0)


async def test_operations_of_one_loop_pass_reach_the_thread_together(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the event loop submits in one pass of its callbacks is one hand-over to the ledger
    thread (one wake-up, one transaction), not one per operation."""
    await ledger.record_seen([job(n) for n in range(40)])
    groups: list[int] = []
    run_group = ledger._run_group

    def counting(batch: list) -> None:  # type: ignore[type-arg]
        groups.append(len(batch))
        run_group(batch)

    monkeypatch.setattr(ledger, "_run_group", counting)
    first = [asyncio.ensure_future(ledger.mark_running(1, n)) for n in range(20)]
    # a callback of the same pass that keeps the loop busy a while (the thread could run meanwhile)
    asyncio.get_running_loop().call_soon(time.sleep, 0.05)
    second = [asyncio.ensure_future(ledger.mark_running(1, n)) for n in range(20, 40)]
    records = await asyncio.gather(*first, *second)
    assert [r.state for r in records] == [S.RUNNING] * 40
    assert groups == [40]


async def test_prepare_answers_stores_a_batch_and_keeps_each_job_apart(ledger: Ledger) -> None:
    await ledger.record_seen([job(1), job(2), job(3)])
    await ledger.mark_running(1, 1)
    await ledger.transition(1, 3, S.ORPHANED, reason="reorg")
    answered_at = time.time() - 5.0  # the handler finished before the batch was written
    out = await ledger.prepare_answers([(1, 1, b"r1", answered_at), (1, 99, b"x", answered_at),
                                        (1, 2, b"r2", answered_at), (1, 3, b"r3", answered_at)])
    first, unknown, second, orphaned = out
    assert isinstance(unknown, UnknownJobError)
    assert not isinstance(first, Exception) and first.state is S.ANSWERED and first.result == b"r1"
    assert not isinstance(second, Exception) and second.state is S.ANSWERED
    assert second.answered_at == answered_at
    assert not isinstance(orphaned, Exception) and orphaned.state is S.ORPHANED


async def test_a_transition_can_be_stamped_with_when_it_happened(ledger: Ledger) -> None:
    await ledger.record_seen([job(1)])
    await ledger.prepare_answer(1, 1, b"r")
    sent_at = time.time() - 2.0
    record = await ledger.transition(1, 1, S.SUBMITTED, tx_hash="0x" + "ab" * 32, at=sent_at)
    assert record.submitted_at == sent_at
