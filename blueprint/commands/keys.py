"""``python -m blueprint keys``: make the operator's keystore (what ``KEYSTORE_URI`` names).

``new`` creates a fresh secp256k1 key, ``import`` stores one read from an environment variable
(never from the command line, where other users and the shell history would see it), ``show``
prints the address and public key of a keystore. Keys are written in the blueprint SDK's layout
(``<dir>/Ecdsa/<blake3 of the public key>``, mode 600), which the blueprint manager reads too.
Each prints one JSON object on stdout; the secret is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from eth_account import Account

from blueprint.cli_errors import UsageError
from blueprint.tangle.keystore import ECDSA_DIR, Operator, load_operator, sdk_key_filename, write_sdk_key


def _refuse_a_second_key(root: Path, operator: Operator) -> None:
    """The daemon wants one key per keystore: another key already there is a mistake."""
    folder = root.expanduser() / ECDSA_DIR
    others = [p for p in folder.iterdir() if p.name != sdk_key_filename(operator.compressed_public_key)] \
        if folder.is_dir() else []
    if others:
        raise UsageError(f"{root} already holds another key ({others[0].name}): use another folder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="Create a fresh operator key in a keystore folder.")
    imported = actions.add_parser("import", help="Store a 0x private key read from an environment variable.")
    imported.add_argument("--private-key-env", metavar="VAR", required=True,
                          help="The environment variable holding the key.")
    show = actions.add_parser("show", help="Print the address and public key of a keystore.")
    for sub in (new, imported, show):
        sub.add_argument("--keystore-uri", default=os.environ.get("KEYSTORE_URI", "./keystore"),
                         help="Keystore folder (default: $KEYSTORE_URI or ./keystore).")
        sub.add_argument("-v", "--verbose", action="count", default=0, help="Show the traceback of an error.")


def main(args: argparse.Namespace) -> int:
    if args.action == "show":
        operator = load_operator(args.keystore_uri)
        path = args.keystore_uri
    else:
        if args.action == "new":
            secret = bytes(Account.create().key)
        else:
            secret = os.environ.get(args.private_key_env, "")
            if not secret:
                raise UsageError(f"environment variable {args.private_key_env} is empty: export the 0x key")
        _refuse_a_second_key(Path(args.keystore_uri), Operator.from_private_key(secret))
        path = str(write_sdk_key(args.keystore_uri, secret))
        operator = load_operator(args.keystore_uri)
    print(json.dumps({"keystore": path, "address": operator.address,
                      "public_key": "0x" + operator.public_key.hex()}))
    return 0
