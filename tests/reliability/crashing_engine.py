"""A zero-cost engine that takes the whole process down on a marked prompt, the way a native
crash in an inference library (a segfault in a kernel, an abort in a tokenizer) would.

Loaded by the daemon under test as ``engine = "tests.reliability.crashing_engine:CrashingEcho"``
to prove the ledger's poison-job guard: such a job must not crash the daemon forever.
"""

from __future__ import annotations

import os
import signal

from bench.echo_engine import EchoClient
from blueprint.llm.types import Completion, CompletionRequest

#: A completion prompt containing this marker kills the process with SIGSEGV.
CRASH_MARKER = "CRASH-THE-ENGINE"


class CrashingEcho(EchoClient):
    async def complete(self, request: CompletionRequest) -> Completion:
        if any(CRASH_MARKER in prompt for prompt in request.prompts()):
            os.kill(os.getpid(), signal.SIGSEGV)
        return await super().complete(request)
