"""Which jobs of a service another operator has completed: what a stand-by operator waits on.

Why one shared watch: an operator stands by for every job another operator is responsible for,
so at any time it may wait on many jobs. Instead of asking ``getJobCall`` for each, one task
reads the service's ``JobCompleted`` logs (``eth_getLogs``, every ``poll_interval_s``) and wakes
the jobs it finds; a job whose turn comes is checked once more with ``getJobCall`` (the
authority) before it is taken over, so a missed log costs at most a duplicate computation that
the chain then refuses, never a lost job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict

import structlog
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from web3 import AsyncWeb3

from blueprint.tangle.abi import JOB_COMPLETED_TOPIC, TANGLE_ABI, fragment, selector
from blueprint.tangle.events import uint_topic

log = structlog.get_logger(__name__)

_GET_JOB_CALL = selector(fragment(TANGLE_ABI, "getJobCall"))
_GET_QUOTED = selector(fragment(TANGLE_ABI, "getJobQuotedOperators"))
#: Completed call ids remembered for waiters that arrive after the log was read.
_REMEMBER = 50_000
#: Most blocks one read covers.
_MAX_RANGE = 2_000


class CompletionWatch:
    """Wakes waiters when their job's ``JobCompleted`` log appears.

    Args:
        w3: web3 over HTTP.
        tangle: the Tangle proxy.
        service_id: the service.
        poll_interval_s: seconds between two log reads while someone waits.
    """

    def __init__(self, w3: AsyncWeb3, tangle: str, service_id: int, *, poll_interval_s: float = 1.0) -> None:
        self.w3 = w3
        self.tangle = AsyncWeb3.to_checksum_address(tangle)
        self.service_id = service_id
        self.poll_interval_s = poll_interval_s
        self._waiters: dict[int, asyncio.Event] = {}
        self._done: OrderedDict[int, None] = OrderedDict()
        self._next_block: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait(self, call_id: int, *, from_block: int, until: float) -> bool:
        """True as soon as the job is seen completed; False at ``until`` (``time.monotonic``)."""
        if call_id in self._done:
            return True
        idle = self._task is None or self._task.done()
        if idle or self._next_block is None:
            self._next_block = from_block  # read from this job's block on
        else:
            self._next_block = min(self._next_block, from_block)  # re-read a little: cheap, safe
        event = self._waiters.setdefault(call_id, asyncio.Event())
        if idle:
            self._task = asyncio.create_task(self._poll(), name="completion-watch")
        try:
            async with asyncio.timeout(max(0.0, until - time.monotonic())):
                await event.wait()
            return True
        except TimeoutError:
            return call_id in self._done
        finally:
            if self._waiters.get(call_id) is event and not event.is_set():
                self._waiters.pop(call_id, None)

    async def is_completed(self, call_id: int) -> bool:
        """``getJobCall(serviceId, callId).completed`` (False for a call the contract does not know)."""
        data = _GET_JOB_CALL + abi_encode(["uint64", "uint64"], [self.service_id, call_id])
        try:
            raw = await self.w3.eth.call({"to": self.tangle, "data": data})
        except Exception as exc:
            if "revert" in str(exc).lower():
                return False
            raise
        (job,) = abi_decode(["(uint8,address,uint64,uint32,bool,bool,uint256)"], bytes(raw))
        return bool(job[4])

    async def quoted_operators(self, call_id: int) -> tuple[str, ...]:
        """``getJobQuotedOperators``: who may answer a quote-paid job (read back on resume)."""
        data = _GET_QUOTED + abi_encode(["uint64", "uint64"], [self.service_id, call_id])
        raw = await self.w3.eth.call({"to": self.tangle, "data": data})
        (operators,) = abi_decode(["address[]"], bytes(raw))
        return tuple(AsyncWeb3.to_checksum_address(op) for op in operators)

    async def _poll(self) -> None:
        while self._waiters:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep watching: the takeover check asks the chain anyway
                log.warning("completions.poll_failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(self.poll_interval_s)

    async def _read(self) -> None:
        head = int(await self.w3.eth.block_number)
        first = self._next_block if self._next_block is not None else head
        if head < first:
            return
        # a job resumed long after its block: older completions are not read (nodes bound the
        # range of eth_getLogs); its turn still ends with the getJobCall check, which is exact
        first = max(first, head - _MAX_RANGE)
        logs = await self.w3.eth.get_logs({
            "address": self.tangle, "fromBlock": first, "toBlock": head,
            "topics": [JOB_COMPLETED_TOPIC, uint_topic(self.service_id)],
        })
        self._next_block = head + 1
        for entry in logs:
            topics = entry["topics"]
            if len(topics) < 3:
                continue
            call_id = int.from_bytes(bytes(topics[2]), "big")
            self._done[call_id] = None
            self._done.move_to_end(call_id)
            event = self._waiters.pop(call_id, None)
            if event is not None:
                event.set()
        while len(self._done) > _REMEMBER:
            self._done.popitem(last=False)
