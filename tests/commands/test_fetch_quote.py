"""``submit --quote`` reads an operator's ``/v1/quote`` answer, an untrusted peer: one that
answers without end is cut at the bound with an error a person can act on, not a CLI that eats
the machine's memory."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from blueprint.cli_errors import CommandFailed
from blueprint.commands.submit import fetch_quote
from tests.loopback import pour, serve_upstream


async def test_a_quote_answer_without_end_is_cut_at_the_bound() -> None:
    outcomes: list[str] = []

    async def quote(request: web.Request) -> web.StreamResponse:
        return await pour(request, b'{"quote": "', b"q" * 16384, outcomes)  # 64 MiB

    runner, base_url = await serve_upstream(post={"/v1/quote": quote})
    try:
        with pytest.raises(CommandFailed, match="sent a quote answer over 1 MiB"):
            await fetch_quote(base_url.removesuffix("/v1"), job_index=0, model="m", max_tokens=1,
                              request={}, requester="0x" + "11" * 20, timeout=5)
        for _ in range(200):  # the server learns of the close at its next write (bounded: 2 s)
            if outcomes:
                break
            await asyncio.sleep(0.01)
        assert outcomes == ["cut"]
    finally:
        await runner.cleanup()
