"""``python -m blueprint deploy``: deploy the committed ``LlmServiceManager`` and create the
blueprint with it (jobs 0 chat, 1 completion, 2 embeddings; empty schemas since payloads are ABI),
optionally with per-job event rates (wei per job, ``msg.value`` of ``submitJob``).
For local and test networks; prints the manager address and the blueprint id as JSON.

The blueprint's source is a native entry point (``tangle-llm-blueprint``, the console script the
package installs) with nothing to fetch unless ``--artifact-uri`` names a real download of the
package: no container image is advertised, because none is built."""

from __future__ import annotations

import argparse
import asyncio
import json

from blueprint.commands._chain import add_chain_arguments, chain_from, settings_from, signer_from
from blueprint.contracts.manager import deploy_manager
from blueprint.devnet import setup


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_chain_arguments(parser)
    parser.add_argument("--event-rate-wei", type=int, nargs=3, metavar=("CHAT", "COMPLETION", "EMBEDDING"),
                        help="Event-driven pricing: wei per job of each index.")
    parser.add_argument("--manager", help="Use an already deployed manager instead of deploying one.")
    parser.add_argument("--metadata-uri", default="")
    parser.add_argument("--artifact-uri", default="",
                        help="An HTTPS URL that really serves this package (a wheel); default: none.")
    parser.add_argument("--code-repository", default="", help="Where the source lives (blueprint metadata).")


async def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    account = signer_from(args, settings)
    async with chain_from(settings) as chain:
        manager = args.manager or await deploy_manager(chain, account)
        rates = dict(enumerate(args.event_rate_wei)) if args.event_rate_wei else None
        pricing = setup.PRICING_EVENT_DRIVEN if rates else setup.PRICING_PAY_ONCE
        blueprint_id = await setup.create_blueprint(chain, account, jobs=setup.DEFAULT_JOBS, manager=manager,
                                                    pricing=pricing, metadata_uri=args.metadata_uri,
                                                    artifact_uri=args.artifact_uri,
                                                    metadata=setup.BlueprintMeta(
                                                        code_repository=args.code_repository))
        if rates:
            await setup.set_job_event_rates(chain, account, blueprint_id, rates)
        print(json.dumps({"manager": manager, "blueprint_id": blueprint_id, "event_rates_wei": rates,
                          "source": {"entrypoint": setup.ENTRYPOINT, "artifact_uri": args.artifact_uri}}))
    return 0


def main(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
