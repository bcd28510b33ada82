"""``python -m blueprint models``: the nodes and models a config declares, without loading them."""

from __future__ import annotations

import argparse
import json

from blueprint.config import load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (default: $BLUEPRINT_CONFIG).")


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    for node in settings.nodes:
        print(json.dumps({"node": node.node_name, "engine": node.engine, "model": node.model,
                          "path": node.path, "base_url": node.base_url}))
    return 0
