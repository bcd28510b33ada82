"""``python -m blueprint <command>``.

Each command lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``; modules are imported only when their command runs, so ``--help`` is fast
and a command that needs torch does not slow down one that does not. An error a command raises is
printed as one or two lines that say what to do (``blueprint.cli_errors``); ``-v`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from blueprint import __version__
from blueprint.cli_errors import report
from blueprint.logging import configure_logging

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("blueprint.commands.models", "List the models the configured nodes serve."),
    "config": ("blueprint.commands.config", "Print the effective settings, or --reference for all of them."),
    "run": ("blueprint.commands.run", "Run the operator daemon (as the blueprint manager starts it)."),
    "dev": ("blueprint.commands.dev", "Bring up a local stack (anvil, service, model, daemon) and try it."),
    "serve": ("blueprint.commands.serve", "Serve the OpenAI-compatible HTTP API over the configured nodes."),
    "keys": ("blueprint.commands.keys", "Create, import or show the operator's keystore."),
    "deploy": ("blueprint.commands.deploy", "Deploy the service manager and create the blueprint."),
    "register": ("blueprint.commands.register", "Register (or update, unregister) this operator's offer."),
    "service": ("blueprint.commands.service", "Request, approve, show a service; permit callers."),
    "operators": ("blueprint.commands.operators", "List a service's operators, models, prices, endpoints."),
    "submit": ("blueprint.commands.submit", "Submit a job (optionally with a quote) and print the result."),
}

#: Commands that set up their own logging.
OWN_LOGGING = frozenset({"run", "serve", "dev"})
#: Daemons logging one event per line: their errors are one log event too, so the log stays so.
DAEMONS = frozenset({"run", "serve"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m blueprint",
        description="Tangle v2 LLM inference blueprint: an operator daemon, an OpenAI-compatible "
        "API, and the tools around them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"python -m blueprint {name}", description=help_text)
    module.add_arguments(sub)
    if not any("-v" in action.option_strings for action in sub._actions):
        sub.add_argument("-v", "--verbose", action="count", default=0,
                         help="Show the traceback of an error.")
    args = sub.parse_args(argv[1:])
    verbose = int(getattr(args, "verbose", 0) or 0)
    if name not in OWN_LOGGING:  # one-shot tools: warnings only, as pretty lines on stderr
        configure_logging(verbose, pretty=True, base_level=logging.WARNING)
    try:
        return int(module.main(args) or 0)
    except (KeyboardInterrupt, Exception) as exc:
        return report(exc, verbose=verbose, as_event=name in DAEMONS)
