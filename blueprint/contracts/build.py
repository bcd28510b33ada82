"""Reproducible build of the blueprint's Solidity contracts (``contracts/*.sol``).

The compiler is the npm ``solc`` package (solcjs, pinned in ``package.json``) driven through its
standard-JSON interface by a tiny node script, with fixed settings: optimizer on (200 runs),
``evmVersion`` cancun, and no metadata hash or CBOR tail, so the bytecode depends only on the
sources and the compiler version. The artifact (ABI + bytecode) is committed under
``blueprint/contracts/artifacts/`` so that deploying needs neither node nor solc.

``python -m blueprint.contracts.build`` rewrites the artifacts; ``--check`` compiles and fails
when the committed artifacts differ from a fresh build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from blueprint.errors import BlueprintError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_DIR = REPO_ROOT / "contracts"
NODE_MODULES = REPO_ROOT / "node_modules"
ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
COMPILE_SCRIPT = Path(__file__).resolve().parent / "_solc_compile.js"
SOLC_VERSION = "0.8.26"
#: The contracts whose artifacts are written (libraries and interfaces are compiled, not kept).
MAIN_CONTRACTS: tuple[str, ...] = ("LlmServiceManager",)
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "metadata": {"bytecodeHash": "none", "appendCBOR": False},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


class BuildError(BlueprintError):
    code = "contract_build_failed"


def standard_json_input(contracts_dir: Path = CONTRACTS_DIR) -> dict[str, Any]:
    """The solc standard-JSON input for every ``.sol`` file, keyed by its bare file name so that
    the output does not depend on where the checkout lives."""
    sources = {
        path.name: {"content": path.read_text(encoding="utf-8")}
        for path in sorted(contracts_dir.glob("*.sol"))
    }
    if not sources:
        raise BuildError(f"no Solidity sources in {contracts_dir}")
    return {"language": "Solidity", "sources": sources, "settings": SETTINGS}


def compile_contracts(
    contracts_dir: Path = CONTRACTS_DIR, timeout: float = 300.0
) -> dict[str, dict[str, Any]]:
    """Compile with solcjs and return ``{contract name: artifact}`` for ``MAIN_CONTRACTS``."""
    node = shutil.which("node")
    if node is None:
        raise BuildError("node is not installed; it is needed only to rebuild the contracts.")
    if not (NODE_MODULES / "solc").is_dir():
        raise BuildError(f"solc not found: run `npm install` in {REPO_ROOT} (installs solc@{SOLC_VERSION}).")
    request = standard_json_input(contracts_dir)
    proc = subprocess.run(
        [node, str(COMPILE_SCRIPT), str(NODE_MODULES)], input=json.dumps(request), capture_output=True,
        text=True, timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"solcjs failed: {proc.stderr.strip()[:2000]}")
    reply = json.loads(proc.stdout)
    version: str = reply["version"]
    if not version.startswith(SOLC_VERSION + "+"):
        raise BuildError(f"solc {version} found, {SOLC_VERSION} is pinned: run `npm ci`.")
    output = reply["output"]
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise BuildError("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    artifacts: dict[str, dict[str, Any]] = {}
    for source_name, contracts in sorted(output.get("contracts", {}).items()):
        for name, compiled in contracts.items():
            if name not in MAIN_CONTRACTS:
                continue
            artifacts[name] = {
                "contractName": name,
                "sourceName": source_name,
                "compiler": {"name": "solcjs", "version": version, "settings": SETTINGS},
                "sourceHashes": {
                    src: hashlib.sha256(body["content"].encode()).hexdigest()
                    for src, body in sorted(request["sources"].items())
                },
                "abi": compiled["abi"],
                "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
            }
    missing = set(MAIN_CONTRACTS) - set(artifacts)
    if missing:
        raise BuildError(f"contracts missing from the compiler output: {sorted(missing)}")
    return artifacts


def render(artifact: dict[str, Any]) -> str:
    """The exact text written to disk (stable key order, trailing newline)."""
    return json.dumps(artifact, indent=1, sort_keys=True) + "\n"


def artifact_path(name: str) -> Path:
    return ARTIFACTS_DIR / f"{name}.json"


def write_artifacts(artifacts: dict[str, dict[str, Any]]) -> list[Path]:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for name, artifact in artifacts.items():
        path = artifact_path(name)
        path.write_text(render(artifact), encoding="utf-8")
        written.append(path)
    return written


def stale_artifacts(artifacts: dict[str, dict[str, Any]]) -> list[str]:
    """Names whose committed artifact differs from ``artifacts`` (a fresh build)."""
    stale = []
    for name, artifact in artifacts.items():
        path = artifact_path(name)
        if not path.is_file() or path.read_text(encoding="utf-8") != render(artifact):
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blueprint.contracts.build", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="Fail if the committed artifacts differ from a fresh build.")
    args = parser.parse_args(argv)
    artifacts = compile_contracts()
    if args.check:
        stale = stale_artifacts(artifacts)
        if stale:
            print(f"stale artifacts: {', '.join(stale)} (run python -m blueprint.contracts.build)",
                  file=sys.stderr)
            return 1
        print("artifacts up to date")
        return 0
    for path in write_artifacts(artifacts):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
