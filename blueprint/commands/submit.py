"""``python -m blueprint submit``: submit a job of any type with a JSON request, wait for the
result and print it. ``--quote`` first asks an operator's HTTP API (``POST /v1/quote``) for a
signed price and submits with ``submitJobFromQuote``."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from blueprint import safejson
from blueprint.bounded import MIB, AnswerTooLargeError, read_bounded, size_text
from blueprint.cli_errors import CommandFailed, UsageError
from blueprint.client import BlueprintClient
from blueprint.commands._chain import add_chain_arguments, chain_from, settings_from, signer_from
from blueprint.jobs.codec import encode_inputs
from blueprint.tangle.quotes import SignedJobQuote, inputs_hash

JOBS = {"chat": 0, "completion": 1, "embedding": 2}
#: A signed quote is a few KiB; an operator's server is untrusted and may answer without end.
MAX_QUOTE_ANSWER_BYTES = MIB


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_chain_arguments(parser)
    parser.add_argument("--service-id", type=int, help="Service (default: $SERVICE_ID).")
    parser.add_argument("--job", choices=sorted(JOBS), default="chat")
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-tokens", type=int, default=256, help="Ceiling paid for (0 for embeddings).")
    parser.add_argument("--request", required=True, help="The OpenAI request body: JSON text or @file.")
    parser.add_argument("--value", type=int, default=0, help="Wei sent with submitJob (the job's rate).")
    parser.add_argument("--quote", action="store_true", help="Pay an operator's signed quote.")
    parser.add_argument("--endpoint", help="Operator API for --quote (default: cheapest offering operator).")
    parser.add_argument("--timeout", type=float, default=120.0)


def _request(text: str) -> dict[str, Any]:
    body = Path(text[1:]).read_text() if text.startswith("@") else text
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise UsageError(f"--request is not valid JSON: {exc}",
                         "pass the OpenAI request body as JSON text, or @file.json") from None
    if not isinstance(request, dict):
        raise UsageError("--request must be a JSON object (the OpenAI request body)")
    return request


async def fetch_quote(endpoint: str, *, job_index: int, model: str, max_tokens: int,
                      request: dict[str, Any], requester: str,
                      timeout: float = 30.0) -> SignedJobQuote:  # noqa: ASYNC109
    """Ask an operator's API for a signed quote of exactly these inputs."""
    body = {"job_index": job_index, "model": model, "max_tokens": max_tokens, "request": request,
            "requester": requester}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(endpoint.rstrip("/") + "/v1/quote", json=body) as resp:
            try:  # an operator's server: untrusted
                data = safejson.loads(await read_bounded(resp, MAX_QUOTE_ANSWER_BYTES))
            except AnswerTooLargeError:
                bound = size_text(MAX_QUOTE_ANSWER_BYTES)
                raise CommandFailed(f"{endpoint} sent a quote answer over {bound}; check --endpoint "
                                    "(an operator's API answers a few KiB).") from None
            if resp.status != 200:
                raise CommandFailed(f"quote refused ({resp.status}): {data}")
    return SignedJobQuote.from_json(data["quote"])


async def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args, service_id=args.service_id)
    if settings.service_id is None:
        raise UsageError("--service-id (or SERVICE_ID) is required")
    account = signer_from(args, settings)
    request = _request(args.request)
    job_index = JOBS[args.job]
    async with chain_from(settings) as chain:
        client = BlueprintClient(chain, settings.service_id)
        quote = None
        inputs = encode_inputs(args.model, args.max_tokens, request)
        if args.quote:
            endpoint = args.endpoint
            if endpoint is None:
                routes = await client.routes(args.model)
                if not routes:
                    raise CommandFailed(f"no operator of service {settings.service_id} offers {args.model!r}")
                endpoint = routes[0].endpoint
            quote = await fetch_quote(endpoint, job_index=job_index, model=args.model,
                                      max_tokens=args.max_tokens, request=request, requester=account.address)
            if quote.details.inputs_hash != inputs_hash(inputs):
                raise CommandFailed("the operator quoted different inputs; refusing to pay")
        call_id = await client.submit(account, job_index, args.model, args.max_tokens, request,
                                      quote=quote, value=args.value, inputs=inputs)
        print(json.dumps({"service_id": settings.service_id, "call_id": call_id,
                          "price": quote.details.price if quote else args.value}))
        print(json.dumps(await client.wait_for_result(call_id, args.timeout)))
    return 0


def main(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
