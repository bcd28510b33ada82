"""The blueprint's Solidity service manager: its committed build artifact and the offer codec.

``load_artifact()`` reads ``artifacts/LlmServiceManager.json`` (ABI + bytecode), which
``python -m blueprint.contracts.build`` regenerates from ``contracts/*.sol``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
MANAGER = "LlmServiceManager"


@cache
def load_artifact(name: str = MANAGER) -> dict[str, Any]:
    """The committed artifact of a contract: ``abi``, ``bytecode``, ``deployedBytecode``, ..."""
    return json.loads((ARTIFACTS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def manager_abi() -> list[dict[str, Any]]:
    return load_artifact(MANAGER)["abi"]


__all__ = ["MANAGER", "load_artifact", "manager_abi"]
