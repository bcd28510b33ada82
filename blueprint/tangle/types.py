"""The nouns the chain layer hands to the rest of the daemon."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JobCall:
    """One job read from a ``JobSubmitted``/``JobSubmittedFromQuote`` log."""

    service_id: int
    call_id: int
    job_index: int
    caller: str
    inputs: bytes
    block_number: int
    block_hash: str
    log_index: int
    tx_hash: str
    from_quote: bool = False
    #: The operators whose quotes paid the job (``JobSubmittedFromQuote``): only they may answer.
    #: Empty for a flat-rate job, and for a quote-paid job read back from the ledger (the chain
    #: has them: ``getJobQuotedOperators``).
    quoted_operators: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JobResult:
    """The encoded answer to one job, ready for ``submitResult``."""

    service_id: int
    call_id: int
    output: bytes
