"""The durable job ledger: the log cursor and every job's life, in SQLite under ``DATA_DIR``.

Why it exists: a job's inputs live only in its ``JobSubmitted`` log, so a job we saw but did not
answer must survive a crash, and a job we answered must never be answered twice. The producer
writes the cursor and the newly seen jobs in **one** transaction, so after any crash either both
are there or neither is (and then the chain still has the logs: we scan them again).

Durability: WAL journal with ``synchronous=NORMAL``. In WAL mode NORMAL never corrupts the database
and survives a crash of the process (``kill -9``) with every committed transaction; only a power
loss or kernel crash may drop the last few commits. That loss is safe here because the cursor and
the jobs roll back *together* and the chain is the source of truth: the producer re-scans from the
older cursor and the consumer's on-chain checks (``ResultAlreadySubmitted`` counts as done) keep
answers single. ``FULL`` would fsync on every commit, which costs milliseconds per job transition
on ordinary disks and would eat the daemon's 50 ms overhead budget under a burst.

Threading: one connection, owned by one worker thread; every public method is a coroutine that
runs its statement on that thread, so the event loop never blocks on disk and statements never
interleave (the state machine checks and the writes are atomic).

State machine (``ALLOWED``; anything else raises :class:`IllegalTransitionError`)::

    seen -> running -> answered -> submitted -> confirmed
      \\________\\__________\\___________\\-> failed (reason) | confirmed (already answered on chain)
    any state -> orphaned (its block left the canonical chain); orphaned -> seen (it came back)
    running -> seen (requeued on restart); submitted -> answered (tx dropped, send again);
    failed -> seen (retry by hand)

With several operators per service (see ``blueprint.tangle.assignment``)::

    seen -> standby (another operator is responsible; we watch, and take over in turn)
    standby -> taken_over (no result landed in time: ours now) -> running -> ...
    running -> standby (no capacity before our deadline: left to the next operator)
    seen | standby | running | answered | submitted -> answered_by_another (a result from
        another operator completed the job)
    seen | standby -> skipped (we may not answer it: we do not offer its model, or were not quoted)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import structlog

from blueprint.errors import BlueprintError
from blueprint.tangle.types import JobCall

log = structlog.get_logger(__name__)
T = TypeVar("T")

LEDGER_FILE = "ledger.sqlite3"
SCHEMA_VERSION = 4
#: How many recent (block number, hash) pairs the producer keeps for finding a reorg's ancestor.
DEFAULT_BLOCK_HISTORY = 512


class JobState(StrEnum):
    SEEN = "seen"
    RUNNING = "running"
    ANSWERED = "answered"
    SUBMITTED = "submitted"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    ORPHANED = "orphaned"
    STANDBY = "standby"
    TAKEN_OVER = "taken_over"
    ANSWERED_BY_ANOTHER = "answered_by_another"
    SKIPPED = "skipped"


S = JobState
ALLOWED: dict[JobState, frozenset[JobState]] = {
    S.SEEN: frozenset({S.RUNNING, S.ANSWERED, S.CONFIRMED, S.FAILED, S.ORPHANED, S.STANDBY,
                       S.ANSWERED_BY_ANOTHER, S.SKIPPED}),
    S.RUNNING: frozenset({S.ANSWERED, S.SEEN, S.CONFIRMED, S.FAILED, S.ORPHANED, S.STANDBY,
                          S.ANSWERED_BY_ANOTHER}),
    S.ANSWERED: frozenset({S.SUBMITTED, S.CONFIRMED, S.FAILED, S.ORPHANED, S.ANSWERED_BY_ANOTHER}),
    S.SUBMITTED: frozenset({S.CONFIRMED, S.ANSWERED, S.FAILED, S.ORPHANED, S.ANSWERED_BY_ANOTHER}),
    S.CONFIRMED: frozenset({S.ORPHANED}),
    S.FAILED: frozenset({S.SEEN, S.ORPHANED}),
    S.ORPHANED: frozenset({S.SEEN}),
    S.STANDBY: frozenset({S.TAKEN_OVER, S.ANSWERED_BY_ANOTHER, S.SKIPPED, S.FAILED, S.ORPHANED}),
    S.TAKEN_OVER: frozenset({S.RUNNING, S.ANSWERED_BY_ANOTHER, S.CONFIRMED, S.FAILED, S.ORPHANED,
                             S.SKIPPED}),
    S.ANSWERED_BY_ANOTHER: frozenset({S.ORPHANED}),
    S.SKIPPED: frozenset({S.ORPHANED}),
}
#: States of a job the daemon still owes an answer, or a watch (resumed on start).
PENDING_STATES: tuple[JobState, ...] = (S.SEEN, S.RUNNING, S.ANSWERED, S.SUBMITTED, S.STANDBY,
                                        S.TAKEN_OVER)
#: Final states re-opened when their job's log moves to another block (a reorg may have changed
#: who answered, or what the call id holds).
_REOPEN_WHEN_MOVED = frozenset({S.CONFIRMED, S.ANSWERED_BY_ANOTHER, S.SKIPPED})
#: Which timing column a state stamps.
_STAMP = {
    S.RUNNING: "started_at",
    S.ANSWERED: "answered_at",
    S.SUBMITTED: "submitted_at",
    S.CONFIRMED: "confirmed_at",
    S.TAKEN_OVER: "taken_over_at",
}


class LedgerError(BlueprintError):
    code = "ledger_error"


class IllegalTransitionError(LedgerError):
    """A job was asked to move to a state its current state does not lead to."""

    code = "illegal_transition"

    def __init__(self, service_id: int, call_id: int, current: JobState, target: JobState) -> None:
        super().__init__(f"job {service_id}/{call_id}: {current} -> {target} is not allowed")
        self.current = current
        self.target = target


class UnknownJobError(LedgerError):
    code = "unknown_job"

    def __init__(self, service_id: int, call_id: int) -> None:
        super().__init__(f"job {service_id}/{call_id} is not in the ledger")


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last log the producer has fully processed: ``log_index`` -1 means the whole block."""

    block_number: int
    block_hash: str
    log_index: int = -1


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One row of the jobs table."""

    service_id: int
    call_id: int
    job_index: int
    caller: str
    inputs: bytes | None
    from_quote: bool
    block_number: int
    block_hash: str
    log_index: int
    tx_hash: str
    state: JobState
    reason: str | None
    result: bytes | None
    result_hash: str | None
    submit_tx_hash: str | None
    attempts: int
    seen_at: float | None
    started_at: float | None
    answered_at: float | None
    submitted_at: float | None
    confirmed_at: float | None
    #: Where our answer landed (the receipt's block), watched by the producer until the cursor
    #: covers it; None when the job was confirmed without a receipt of ours (already answered).
    answer_block: int | None = None
    answer_hash: str | None = None
    answer_anchored: bool = False
    #: How many times the handler was started on this job (the poison-job guard reads it: a job
    #: whose earlier runs never finished took the process down with it).
    runs: int = 0
    #: When we took the job over from the operator ranked before us (None: never), kept through
    #: the states that follow, so the console can count the jobs we took over.
    taken_over_at: float | None = None

    def to_job_call(self) -> JobCall:
        """The job as the producer delivered it (inputs are kept until confirmed)."""
        return JobCall(
            service_id=self.service_id,
            call_id=self.call_id,
            job_index=self.job_index,
            caller=self.caller,
            inputs=self.inputs or b"",
            block_number=self.block_number,
            block_hash=self.block_hash,
            log_index=self.log_index,
            tx_hash=self.tx_hash,
            from_quote=self.from_quote,
        )


_JOB_COLUMNS = (
    "service_id, call_id, job_index, caller, inputs, from_quote, block_number, block_hash, log_index, "
    "tx_hash, state, reason, result, result_hash, submit_tx_hash, attempts, seen_at, started_at, "
    "answered_at, submitted_at, confirmed_at, answer_block, answer_hash, answer_anchored, runs, "
    "taken_over_at"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursor (
    stream TEXT PRIMARY KEY,
    block_number INTEGER NOT NULL,
    block_hash TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (number INTEGER PRIMARY KEY, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    service_id INTEGER NOT NULL,
    call_id INTEGER NOT NULL,
    job_index INTEGER NOT NULL,
    caller TEXT NOT NULL,
    inputs BLOB,
    from_quote INTEGER NOT NULL DEFAULT 0,
    block_number INTEGER NOT NULL,
    block_hash TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    result BLOB,
    result_hash TEXT,
    submit_tx_hash TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    seen_at REAL,
    started_at REAL,
    answered_at REAL,
    submitted_at REAL,
    confirmed_at REAL,
    answer_block INTEGER,
    answer_hash TEXT,
    answer_anchored INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 0,
    taken_over_at REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (service_id, call_id)
);
"""

#: Indexes, (re)created on every open: a ledger from an older build gets the ones added since.
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_block ON jobs (block_number);
CREATE INDEX IF NOT EXISTS jobs_answer_watch ON jobs (answer_block)
    WHERE state = 'confirmed' AND answer_anchored = 0;
"""

#: Schema upgrades, applied in order to a ledger written by an older build (version -> script).
_MIGRATIONS: dict[int, str] = {
    # 1 -> 2: where each answer landed, so a reorg that drops it is noticed even when the
    # producer's cursor had not reached the answer's block. Answers confirmed by the old build
    # are trusted (anchored): the old build checked them against the cursor already.
    1: """
ALTER TABLE jobs ADD COLUMN answer_block INTEGER;
ALTER TABLE jobs ADD COLUMN answer_hash TEXT;
ALTER TABLE jobs ADD COLUMN answer_anchored INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET answer_anchored = 1 WHERE state = 'confirmed';
UPDATE meta SET value = '2' WHERE key = 'schema_version';
""",
    # 2 -> 3: handler starts per job, for the poison-job guard (a job that crashed the process).
    2: """
ALTER TABLE jobs ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;
UPDATE meta SET value = '3' WHERE key = 'schema_version';
""",
    # 3 -> 4: when a job was taken over from another operator (the console counts them).
    3: """
ALTER TABLE jobs ADD COLUMN taken_over_at REAL;
UPDATE meta SET value = '4' WHERE key = 'schema_version';
""",
}


def _private_file(path: Path) -> None:
    """Create the ledger's directory 0700 and its file 0600 before SQLite opens it (SQLite gives
    the WAL and shared-memory files the database file's mode): it holds pending prompts. A
    directory that already exists open to others is reported, not changed (it may be shared)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
        os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
    elif path.parent.stat().st_mode & 0o077:
        log.warning("ledger.directory_not_private", path=str(path.parent),
                    note="it holds pending prompts: chmod 700 it")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists() and part.stat().st_mode & 0o077:
            os.chmod(part, 0o600)


def _record(row: Sequence[Any]) -> JobRecord:
    values = list(row)
    values[5] = bool(values[5])
    values[10] = JobState(values[10])
    values[23] = bool(values[23])
    return JobRecord(*values)


_GROUP_MAX = 512


@dataclass(slots=True)
class _Op:
    fn: Callable[[], Any]
    in_tx: bool
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _settle(items: list[tuple[_Op, Any, BaseException | None]]) -> None:
    for op, value, exc in items:
        if op.future.done():
            continue
        if exc is not None:
            op.future.set_exception(exc)
        else:
            op.future.set_result(value)


class Ledger:
    """The job ledger. Open with ``await Ledger.open(data_dir)``; close with ``await close()``.

    Every method is a coroutine safe to call from any task. Operations run one at a time on the
    ledger's own thread; the operations queued while it was busy run together in one transaction
    (group commit), each under its own savepoint, so a burst costs one commit and one thread hop
    for many jobs, and one failing operation (an illegal transition) leaves the others intact.

    The operations an event loop submits during one pass of its callbacks are handed to the
    thread together, at the end of that pass: one wake-up of the ledger thread per pass, not per
    operation. Each wake-up is a context switch and a contest for the GIL with the event loop;
    on a busy machine a burst of single hand-overs cost milliseconds per job in switches alone.
    """

    def __init__(self, path: Path, *, block_history: int = DEFAULT_BLOCK_HISTORY) -> None:
        self.path = path
        self.block_history = block_history
        self._conn: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        #: operations submitted during the current pass of each event loop, not yet handed over
        self._tick: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
        self._tick_lock = threading.Lock()
        self._thread = threading.Thread(target=self._worker, name="ledger", daemon=True)
        self._thread.start()

    @classmethod
    async def open(cls, location: str | Path, *, block_history: int = DEFAULT_BLOCK_HISTORY) -> Ledger:
        """Open (creating if needed) the ledger. ``location`` is ``DATA_DIR`` or a ``.sqlite3`` file."""
        path = Path(location)
        if path.suffix not in (".sqlite3", ".db", ".sqlite"):
            path = path / LEDGER_FILE
        ledger = cls(path, block_history=block_history)
        try:
            await ledger._submit(ledger._connect, in_tx=False)
        except BaseException:
            await ledger.close()
            raise
        return ledger

    async def close(self) -> None:
        """Close the database and stop the ledger thread (idempotent)."""
        if not self._thread.is_alive():
            return
        if self._conn is not None:
            await self._submit(self._close, in_tx=False)
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, 10.0)

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the ledger thread, inside the current group transaction."""
        return await self._submit(fn, in_tx=True)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(db)`` on the ledger thread, atomically (its own savepoint in the group)."""
        return await self._submit(lambda: fn(self._db), in_tx=True)

    def _submit(self, fn: Callable[[], T], *, in_tx: bool) -> asyncio.Future[T]:
        if not self._thread.is_alive():
            raise LedgerError("ledger is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._tick_lock:
            ops = self._tick.get(loop)
            if ops is None:
                ops = self._tick[loop] = []
                loop.call_soon(self._hand_over, loop)
            ops.append(_Op(fn, in_tx, future, loop))
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the thread what ``loop`` submitted during its last pass of callbacks."""
        with self._tick_lock:
            ops = self._tick.pop(loop, None)
        if ops:
            self._queue.put(ops)

    # --- the ledger thread --------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = list(first)
            while len(batch) < _GROUP_MAX:
                try:
                    ops = self._queue.get_nowait()
                except queue.Empty:
                    break
                if ops is None:
                    self._queue.put(None)  # finish this group, then stop
                    break
                batch += ops
            self._run_group(batch)

    def _run_group(self, batch: list[_Op]) -> None:
        done: list[tuple[_Op, Any, BaseException | None]] = []
        in_tx = False
        try:
            for op in batch:
                if op.in_tx and not in_tx and self._conn is not None:
                    self._conn.execute("BEGIN IMMEDIATE")
                    in_tx = True
                if not op.in_tx and in_tx:
                    self._db.execute("COMMIT")
                    in_tx = False
                if in_tx:
                    self._db.execute("SAVEPOINT op")
                try:
                    value = op.fn()
                except Exception as exc:
                    if in_tx:
                        self._db.execute("ROLLBACK TO op")
                        self._db.execute("RELEASE op")
                    done.append((op, None, exc))
                    continue
                if in_tx:
                    self._db.execute("RELEASE op")
                done.append((op, value, None))
            if in_tx:
                self._db.execute("COMMIT")
        except Exception as exc:  # the commit itself failed (disk full, I/O error): nothing stuck
            if in_tx and self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            log.error("ledger.commit_failed", error=str(exc), ops=len(batch))
            done = [(op, None, exc) for op in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op, Any, BaseException | None]]] = {}
        for item in done:
            by_loop.setdefault(item[0].loop, []).append(item)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, items)

    # --- connection (ledger thread) -----------------------------------------------------------

    def _connect(self) -> None:
        _private_file(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        fresh = conn.execute("SELECT name FROM sqlite_master WHERE name = 'jobs'").fetchone() is None
        if fresh:
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
        version = int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        while version in _MIGRATIONS and version < SCHEMA_VERSION:
            conn.executescript(f"BEGIN; {_MIGRATIONS[version]} COMMIT;")
            log.info("ledger.migrated", path=str(self.path), version=version + 1)
            version += 1
        if version != SCHEMA_VERSION:
            conn.close()
            raise LedgerError(f"ledger {self.path} has schema {version}, this build reads {SCHEMA_VERSION}")
        conn.executescript(_INDEXES)
        self._conn = conn

    def _close(self) -> None:
        assert self._conn is not None
        self._conn.close()
        self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError("ledger is closed")
        return self._conn

    # --- cursor and block history -------------------------------------------------------------

    async def get_cursor(self, stream: str = "jobs") -> Cursor | None:
        """The producer's cursor, or None before the first scan."""

        def read() -> Cursor | None:
            row = self._db.execute(
                "SELECT block_number, block_hash, log_index FROM cursor WHERE stream = ?", (stream,)
            ).fetchone()
            return Cursor(*row) if row else None

        return await self._run(read)

    async def set_cursor(self, cursor: Cursor, blocks: Iterable[tuple[int, str]] = (),
                         stream: str = "jobs") -> None:
        """Move the cursor (and remember block hashes) without any job."""
        await self.record_seen((), cursor=cursor, blocks=blocks, stream=stream)

    async def block_hashes(self, below_or_at: int,
                           limit: int = DEFAULT_BLOCK_HISTORY) -> list[tuple[int, str]]:
        """Remembered canonical (number, hash) pairs, newest first, at or below a block."""

        def read() -> list[tuple[int, str]]:
            rows = self._db.execute(
                "SELECT number, hash FROM blocks WHERE number <= ? ORDER BY number DESC LIMIT ?",
                (below_or_at, limit),
            ).fetchall()
            return [(int(n), str(h)) for n, h in rows]

        return await self._run(read)

    def _put_cursor(self, db: sqlite3.Connection, stream: str, cursor: Cursor) -> None:
        db.execute(
            "INSERT INTO cursor (stream, block_number, block_hash, log_index, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream) DO UPDATE SET "
            "block_number = excluded.block_number, block_hash = excluded.block_hash, "
            "log_index = excluded.log_index, updated_at = excluded.updated_at",
            (stream, cursor.block_number, cursor.block_hash.lower(), cursor.log_index, time.time()),
        )

    def _put_blocks(self, db: sqlite3.Connection, blocks: Iterable[tuple[int, str]]) -> None:
        rows = [(int(n), h.lower()) for n, h in blocks]
        if not rows:
            return
        db.executemany("INSERT OR REPLACE INTO blocks (number, hash) VALUES (?, ?)", rows)
        newest = max(n for n, _ in rows)
        db.execute("DELETE FROM blocks WHERE number <= ?", (newest - self.block_history,))

    # --- jobs: intake -------------------------------------------------------------------------

    async def record_seen(
        self,
        jobs: Sequence[JobCall],
        *,
        cursor: Cursor | None = None,
        blocks: Iterable[tuple[int, str]] = (),
        scanned: tuple[int, int, int] | None = None,
        stream: str = "jobs",
    ) -> list[JobCall]:
        """Record jobs read from logs, and optionally the new cursor, in one transaction.

        Idempotent: a job already known is not returned again (a re-delivered log is a no-op,
        though its block fields follow the chain if it moved to another block). An ``orphaned``
        job that reappears, or a ``confirmed`` one whose log moved to another block (a reorg
        that may have dropped our answer), goes back to ``seen`` and is returned. Returns the
        jobs to deliver.

        ``scanned=(service_id, first, last)`` says ``jobs`` are *all* that service's job logs in
        that canonical block range: a known job of the service recorded in the range but absent
        from ``jobs`` (seen earlier on a fork, e.g. pushed by a subscription just before a reorg)
        is orphaned.
        """
        blocks = list(blocks)

        def write(db: sqlite3.Connection) -> list[JobCall]:
            now = time.time()
            fresh: list[JobCall] = []
            for job in jobs:
                row = db.execute(
                    "SELECT state, block_hash, log_index FROM jobs WHERE service_id = ? AND call_id = ?",
                    (job.service_id, job.call_id),
                ).fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO jobs (service_id, call_id, job_index, caller, inputs, from_quote, "
                        "block_number, block_hash, log_index, tx_hash, state, seen_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (job.service_id, job.call_id, job.job_index, job.caller, job.inputs,
                         int(job.from_quote), job.block_number, job.block_hash.lower(), job.log_index,
                         job.tx_hash.lower(), S.SEEN.value, now, now),
                    )
                    fresh.append(job)
                    continue
                state = JobState(row[0])
                moved = row[1] != job.block_hash.lower() or row[2] != job.log_index
                # A confirmed job whose log now sits in another block went through a reorg that
                # may have removed our answer (or put another job at this call id): answer anew.
                if state is S.ORPHANED or (moved and state in _REOPEN_WHEN_MOVED):
                    db.execute(
                        "UPDATE jobs SET state = ?, reason = NULL, job_index = ?, caller = ?, inputs = ?, "
                        "block_number = ?, block_hash = ?, log_index = ?, tx_hash = ?, seen_at = ?, "
                        "taken_over_at = NULL, updated_at = ? WHERE service_id = ? AND call_id = ?",
                        (S.SEEN.value, job.job_index, job.caller, job.inputs, job.block_number,
                         job.block_hash.lower(), job.log_index, job.tx_hash.lower(), now, now,
                         job.service_id, job.call_id),
                    )
                    fresh.append(job)
                elif moved:
                    db.execute(
                        "UPDATE jobs SET block_number = ?, block_hash = ?, log_index = ?, tx_hash = ?, "
                        "updated_at = ? WHERE service_id = ? AND call_id = ?",
                        (job.block_number, job.block_hash.lower(), job.log_index, job.tx_hash.lower(), now,
                         job.service_id, job.call_id),
                    )
            if scanned is not None:
                found = {(j.service_id, j.call_id) for j in jobs}
                rows = db.execute(
                    "SELECT service_id, call_id FROM jobs WHERE service_id = ? "
                    "AND block_number BETWEEN ? AND ? AND state != ?",
                    (*scanned, S.ORPHANED.value),
                ).fetchall()
                gone = [(int(s), int(c)) for s, c in rows if (int(s), int(c)) not in found]
                if gone:
                    log.warning("ledger.orphaned_not_in_chain", jobs=gone, first=scanned[1], last=scanned[2])
                db.executemany(
                    "UPDATE jobs SET state = ?, reason = 'not in canonical chain', updated_at = ? "
                    "WHERE service_id = ? AND call_id = ?",
                    [(S.ORPHANED.value, now, s, c) for s, c in gone],
                )
            if cursor is not None:
                self._put_cursor(db, stream, cursor)
            self._put_blocks(db, blocks)
            return fresh

        return await self._write(write)

    async def rewind(
        self,
        ancestor: Cursor,
        *,
        service_id: int | None = None,
        keep: Iterable[tuple[int, int]] = (),
        stream: str = "jobs",
    ) -> list[tuple[int, int]]:
        """A reorg: move the cursor back to the common ancestor and orphan the jobs of later blocks.

        ``keep`` lists (service_id, call_id) pairs already found again in the new chain: those are
        not orphaned. Only ``service_id``'s jobs when given. Forgets the block hashes above the
        ancestor. Returns the orphaned pairs.
        """
        keep_set = {(int(s), int(c)) for s, c in keep}

        def write(db: sqlite3.Connection) -> list[tuple[int, int]]:
            now = time.time()
            sql = "SELECT service_id, call_id FROM jobs WHERE block_number > ? AND state != ?"
            args: list[Any] = [ancestor.block_number, S.ORPHANED.value]
            if service_id is not None:
                sql += " AND service_id = ?"
                args.append(service_id)
            rows = db.execute(sql, args).fetchall()
            orphaned = [(int(s), int(c)) for s, c in rows if (int(s), int(c)) not in keep_set]
            db.executemany(
                "UPDATE jobs SET state = ?, reason = 'reorg', updated_at = ? "
                "WHERE service_id = ? AND call_id = ?",
                [(S.ORPHANED.value, now, s, c) for s, c in orphaned],
            )
            db.execute("DELETE FROM blocks WHERE number > ?", (ancestor.block_number,))
            self._put_cursor(db, stream, ancestor)
            return orphaned

        return await self._write(write)

    async def orphan_if_in_block(self, service_id: int, call_id: int, block_hash: str) -> bool:
        """Orphan a job whose log a node reported ``removed`` (only if it is still from that block)."""

        def write(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE jobs SET state = ?, reason = 'removed log', updated_at = ? "
                "WHERE service_id = ? AND call_id = ? AND block_hash = ? AND state != ?",
                (S.ORPHANED.value, time.time(), service_id, call_id, block_hash.lower(), S.ORPHANED.value),
            )
            return cur.rowcount > 0

        return await self._write(write)

    # --- jobs: life cycle ---------------------------------------------------------------------

    async def transition(
        self,
        service_id: int,
        call_id: int,
        target: JobState,
        *,
        reason: str | None = None,
        result: bytes | None = None,
        tx_hash: str | None = None,
        answer: tuple[int, str] | None = None,
        at: float | None = None,
    ) -> JobRecord:
        """Move one job to ``target`` (checked against :data:`ALLOWED`) and return the new row."""
        records = await self.transition_many([(service_id, call_id)], target, reason=reason, result=result,
                                             tx_hash=tx_hash, answer=answer, at=at)
        return records[0]

    async def transition_many(
        self,
        keys: Sequence[tuple[int, int]],
        target: JobState,
        *,
        reason: str | None = None,
        result: bytes | None = None,
        tx_hash: str | None = None,
        answer: tuple[int, str] | None = None,
        at: float | None = None,
    ) -> list[JobRecord]:
        """Move several jobs at once (one transaction; all or none). See :meth:`transition`.

        ``answered`` stores ``result`` and its sha256; ``submitted`` stores ``tx_hash`` and counts
        an attempt; ``confirmed`` drops the inputs and result bytes (no longer needed; the hash
        stays) and stores ``answer``, the (block number, block hash) of the receipt, for the
        producer to watch; ``failed`` and ``orphaned`` store ``reason``. ``at`` is when the state
        was reached (the state's timing column; default now): ``submitted`` is stamped with the
        moment the node accepted the transaction, not the later moment this write ran.
        """
        target = JobState(target)

        def write(db: sqlite3.Connection) -> list[JobRecord]:
            now = time.time()
            out: list[JobRecord] = []
            for service_id, call_id in keys:
                current = self._state(db, service_id, call_id)
                if target not in ALLOWED[current]:
                    raise IllegalTransitionError(service_id, call_id, current, target)
                self._apply(db, service_id, call_id, target, now, reason=reason, result=result,
                            tx_hash=tx_hash, answer=answer, at=at)
                out.append(self._get(db, service_id, call_id))  # type: ignore[arg-type]
            return out

        return await self._write(write)

    async def prepare_answer(self, service_id: int, call_id: int, result: bytes) -> JobRecord:
        """Store ``result`` as the job's answer, in one step, and return the row.

        ``seen``/``running`` jobs become ``answered``; a ``submitted`` job (resumed after a
        restart) goes back to ``answered`` to be sent again; an ``answered`` job gets the new
        bytes. ``orphaned``, ``confirmed`` and ``failed`` jobs are returned unchanged: the caller
        must not send them.
        """

        def write(db: sqlite3.Connection) -> JobRecord:
            current = self._state(db, service_id, call_id)
            if current in (S.SEEN, S.RUNNING, S.SUBMITTED, S.ANSWERED):
                self._apply(db, service_id, call_id, S.ANSWERED, time.time(), result=result)
            return self._get(db, service_id, call_id)  # type: ignore[return-value]

        return await self._write(write)

    async def prepare_answers(
        self, answers: Sequence[tuple[int, int, bytes, float]]
    ) -> list[JobRecord | LedgerError]:
        """:meth:`prepare_answer` for several ``(service_id, call_id, result, answered_at)`` in one
        ledger operation (a batch of results about to share a transaction), each job on its own:
        one unknown to the ledger gets its :class:`UnknownJobError` in its place, the others go
        on. ``answered_at`` is when the handler produced the result (the batch is written later)."""

        def write(db: sqlite3.Connection) -> list[JobRecord | LedgerError]:
            now = time.time()
            out: list[JobRecord | LedgerError] = []
            for service_id, call_id, result, answered_at in answers:
                try:
                    current = self._state(db, service_id, call_id)
                except UnknownJobError as exc:
                    out.append(exc)
                    continue
                if current in (S.SEEN, S.RUNNING, S.SUBMITTED, S.ANSWERED):
                    self._apply(db, service_id, call_id, S.ANSWERED, now, result=result, at=answered_at)
                out.append(self._get(db, service_id, call_id))  # type: ignore[arg-type]
            return out

        return await self._write(write)

    @staticmethod
    def _state(db: sqlite3.Connection, service_id: int, call_id: int) -> JobState:
        row = db.execute(
            "SELECT state FROM jobs WHERE service_id = ? AND call_id = ?", (service_id, call_id)
        ).fetchone()
        if row is None:
            raise UnknownJobError(service_id, call_id)
        return JobState(row[0])

    @staticmethod
    def _apply(db: sqlite3.Connection, service_id: int, call_id: int, target: JobState, now: float, *,
               reason: str | None = None, result: bytes | None = None, tx_hash: str | None = None,
               answer: tuple[int, str] | None = None, at: float | None = None) -> None:
        sets = ["state = ?", "updated_at = ?"]
        args: list[Any] = [target.value, now]
        if target in _STAMP:
            sets.append(f"{_STAMP[target]} = ?")
            args.append(now if at is None else at)
        if target is S.RUNNING:
            sets.append("runs = runs + 1")
        if target is S.ANSWERED:
            if result is None:
                raise LedgerError("an answered job needs its result bytes")
            sets += ["result = ?", "result_hash = ?", "reason = NULL"]
            args += [result, "0x" + hashlib.sha256(result).hexdigest()]
        elif target is S.SUBMITTED:
            sets += ["submit_tx_hash = ?", "attempts = attempts + 1"]
            args.append(tx_hash.lower() if tx_hash else None)
        elif target is S.CONFIRMED:
            sets += ["inputs = NULL", "result = NULL", "reason = ?"]
            args.append(reason)
            if tx_hash:
                sets.append("submit_tx_hash = ?")
                args.append(tx_hash.lower())
            if answer is not None:  # watched by the producer until the cursor covers it
                sets += ["answer_block = ?", "answer_hash = ?", "answer_anchored = 0"]
                args += [int(answer[0]), answer[1].lower()]
            else:  # confirmed from the chain's word (already answered): nothing of ours to watch
                sets += ["answer_block = NULL", "answer_hash = NULL", "answer_anchored = 1"]
        elif target in (S.ANSWERED_BY_ANOTHER, S.SKIPPED):  # final: nothing of ours to keep
            sets += ["inputs = NULL", "result = NULL", "reason = ?"]
            args.append(reason)
        elif target in (S.FAILED, S.ORPHANED, S.SEEN, S.STANDBY, S.TAKEN_OVER):
            sets.append("reason = ?")
            args.append(reason)
        db.execute(
            f"UPDATE jobs SET {', '.join(sets)} WHERE service_id = ? AND call_id = ?",
            (*args, service_id, call_id),
        )

    async def mark_running(self, service_id: int, call_id: int) -> JobRecord:
        """``running``, counting one more handler start in ``runs``."""
        return await self.transition(service_id, call_id, S.RUNNING)

    async def forget_run(self, service_id: int, call_id: int) -> None:
        """Uncount the last handler start: the run was cut short on purpose (a graceful stop),
        not by the job, so it must not count towards the poison-job guard."""

        def write(db: sqlite3.Connection) -> None:
            db.execute("UPDATE jobs SET runs = MAX(runs - 1, 0) WHERE service_id = ? AND call_id = ?",
                       (service_id, call_id))

        await self._write(write)

    async def mark_answered(self, service_id: int, call_id: int, result: bytes) -> JobRecord:
        return await self.transition(service_id, call_id, S.ANSWERED, result=result)

    async def mark_submitted(self, service_id: int, call_id: int, tx_hash: str) -> JobRecord:
        return await self.transition(service_id, call_id, S.SUBMITTED, tx_hash=tx_hash)

    async def mark_confirmed(self, service_id: int, call_id: int, *, tx_hash: str | None = None,
                             note: str | None = None, answer: tuple[int, str] | None = None) -> JobRecord:
        return await self.transition(service_id, call_id, S.CONFIRMED, tx_hash=tx_hash, reason=note,
                                     answer=answer)

    async def mark_failed(self, service_id: int, call_id: int, reason: str) -> JobRecord:
        return await self.transition(service_id, call_id, S.FAILED, reason=reason)

    # --- queries ------------------------------------------------------------------------------

    @staticmethod
    def _get(db: sqlite3.Connection, service_id: int, call_id: int) -> JobRecord | None:
        row = db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE service_id = ? AND call_id = ?", (service_id, call_id)
        ).fetchone()
        return _record(row) if row else None

    async def get(self, service_id: int, call_id: int) -> JobRecord | None:
        return await self._run(lambda: self._get(self._db, service_id, call_id))

    async def pending_on_start(self, service_id: int | None = None) -> list[JobRecord]:
        """Jobs seen but not finished (seen, running, answered, submitted), oldest first.

        The daemon resumes each: it checks on chain that the job is not already answered
        (:meth:`Consumer.is_answered_on_chain`), then runs it (seen/running) or resubmits its
        stored result (answered/submitted).
        """
        marks = ", ".join("?" for _ in PENDING_STATES)
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({marks})"
        args: list[Any] = [s.value for s in PENDING_STATES]
        if service_id is not None:
            sql += " AND service_id = ?"
            args.append(service_id)
        sql += " ORDER BY block_number, log_index"
        return await self._run(lambda: [_record(r) for r in self._db.execute(sql, args).fetchall()])

    # --- answers: watched until the cursor covers them ----------------------------------------

    async def unanchored_answers(self, up_to_block: int, service_id: int | None = None) -> list[JobRecord]:
        """Confirmed jobs whose answer sits in a block at or below ``up_to_block`` that has not yet
        been checked against the canonical chain (see :meth:`anchor_answers`)."""
        # every scan asks, and the answers still watched are few however large the ledger grows:
        # read them through the partial index (its conditions spelled as literals, or SQLite may
        # not use it; without statistics the planner would rather take jobs_state, every confirmed job)
        sql = (f"SELECT {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_answer_watch WHERE state = 'confirmed' "
               "AND answer_anchored = 0 AND answer_block <= ?")
        args: list[Any] = [up_to_block]
        if service_id is not None:
            sql += " AND service_id = ?"
            args.append(service_id)
        sql += " ORDER BY answer_block"
        return await self._run(lambda: [_record(r) for r in self._db.execute(sql, args).fetchall()])

    async def anchor_answers(self, keys: Iterable[tuple[int, int]]) -> None:
        """These answers' blocks were canonical while the cursor (checked on every scan) was at
        or above them: from now on a reorg that removes them also replaces the cursor's block,
        and :meth:`unanchor_answers_above` re-opens them then."""
        rows = [(int(s), int(c)) for s, c in keys]

        def write(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE jobs SET answer_anchored = 1 WHERE service_id = ? AND call_id = ?", rows)

        await self._write(write)

    async def move_answer(self, service_id: int, call_id: int, block_number: int, block_hash: str) -> None:
        """Our answer's transaction was re-included in another block: watch it there."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE jobs SET answer_block = ?, answer_hash = ?, answer_anchored = 0 "
                "WHERE service_id = ? AND call_id = ?",
                (block_number, block_hash.lower(), service_id, call_id),
            )

        await self._write(write)

    async def unanchor_answers_above(self, block_number: int, service_id: int | None = None) -> int:
        """A reorg replaced the blocks above ``block_number``: answers there must be checked again."""

        def write(db: sqlite3.Connection) -> int:
            sql = "UPDATE jobs SET answer_anchored = 0 WHERE state = ? AND answer_block > ?"
            args: list[Any] = [S.CONFIRMED.value, block_number]
            if service_id is not None:
                sql += " AND service_id = ?"
                args.append(service_id)
            return db.execute(sql, args).rowcount

        return await self._write(write)

    async def reopen_lost_answers(self, keys: Sequence[tuple[int, int]], cursor: Cursor,
                                  stream: str = "jobs") -> None:
        """Our answers to these confirmed jobs left the chain: orphan the jobs and move the cursor
        back to ``cursor`` (below their logs), in one transaction, so the next scan delivers them
        again (``orphaned`` -> ``seen``) and they are answered anew."""

        def write(db: sqlite3.Connection) -> None:
            now = time.time()
            for service_id, call_id in keys:
                if self._state(db, service_id, call_id) is not S.CONFIRMED:
                    continue  # it moved on meanwhile (a rescan already re-delivered it)
                self._apply(db, service_id, call_id, S.ORPHANED, now, reason="answer removed by a reorg")
            row = db.execute("SELECT block_number FROM cursor WHERE stream = ?", (stream,)).fetchone()
            if row is None or int(row[0]) > cursor.block_number:
                self._put_cursor(db, stream, cursor)

        await self._write(write)

    async def jobs(self, state: JobState | None = None, limit: int = 10_000) -> list[JobRecord]:
        """Jobs (in one state, if given), oldest first."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs"
        args: list[Any] = []
        if state is not None:
            sql += " WHERE state = ?"
            args.append(JobState(state).value)
        sql += " ORDER BY block_number, log_index LIMIT ?"
        args.append(limit)
        return await self._run(lambda: [_record(r) for r in self._db.execute(sql, args).fetchall()])

    async def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (all states present, zero if none)."""

        def read() -> dict[JobState, int]:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
            out = dict.fromkeys(JobState, 0)
            out.update({JobState(s): int(n) for s, n in rows})
            return out

        return await self._run(read)

    async def sharing_counts(self, service_id: int | None = None) -> dict[str, int]:
        """How this operator shared the jobs with the service's other operators: jobs we took over
        (another operator was first and did not answer in time; one another operator answered
        after all counts as answered by another, not here), jobs another operator answered, jobs
        we skipped (not ours to answer) and jobs we stand by on now."""
        where, args = ("WHERE service_id = ?", [service_id]) if service_id is not None else ("", [])
        sql = ("SELECT SUM(taken_over_at IS NOT NULL AND state NOT IN ('answered_by_another', 'skipped')), "
               "SUM(state = 'answered_by_another'), SUM(state = 'skipped'), SUM(state = 'standby') "
               f"FROM jobs {where}")

        def read() -> dict[str, int]:
            row = self._db.execute(sql, args).fetchone()
            keys = ("taken_over", "answered_by_another", "skipped", "standby")
            return {key: int(value or 0) for key, value in zip(keys, row, strict=True)}

        return await self._run(read)

    async def recent(self, limit: int, service_id: int | None = None) -> list[JobRecord]:
        """The newest ``limit`` jobs (by block and log position), newest first: what an operator
        looks at first (the console's chain panel)."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs"
        args: list[Any] = []
        if service_id is not None:
            sql += " WHERE service_id = ?"
            args.append(service_id)
        sql += " ORDER BY block_number DESC, log_index DESC LIMIT ?"
        args.append(limit)
        return await self._run(lambda: [_record(r) for r in self._db.execute(sql, args).fetchall()])
