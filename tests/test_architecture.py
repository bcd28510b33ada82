"""The package layering holds: which package may import which (issue 12's rules).

Two checks. The static one reads every import statement of a package's modules, those inside
functions and ``TYPE_CHECKING`` blocks included (a lazy import is still a dependency). The
runtime one imports each package and all of its modules in a fresh interpreter and looks at what
got loaded, which also catches a dependency that arrives through a third module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "blueprint"

#: package -> the blueprint packages (or modules) it must not import.
RULES: dict[str, set[str]] = {
    "llm": {"balancer", "server", "jobs", "tangle", "quoting", "context", "devnet"},
    "balancer": {"tangle", "server", "jobs", "quoting", "context", "devnet"},
    "jobs": {"tangle", "server", "quoting", "devnet"},
    "tangle": {"llm", "balancer", "server", "jobs", "quoting", "context", "devnet", "contracts"},
    "server": {"tangle", "jobs", "quoting.quoter", "context", "devnet", "contracts"},
    "quoting": {"server"},
    "runner": {"*"},  # the generic runner knows no part of the operator
}
#: Nothing but the CLI (and the commands themselves) imports a command.
ONLY_CLI_IMPORTS = "commands"
#: Modules the runtime check may fail to import for want of an optional dependency.
OPTIONAL = {"vllm", "torch", "transformers"}


def _owner(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name below ``blueprint``) of every import of a blueprint module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found += [(node.lineno, name.removeprefix("blueprint.")) for name in names
                  if name.startswith("blueprint.")]
    return found


def _forbidden(owner: str, target: str) -> bool:
    if target.split(".")[0] == ONLY_CLI_IMPORTS and owner not in (ONLY_CLI_IMPORTS, "cli"):
        return True
    banned = RULES.get(owner, set())
    if "*" in banned:
        return True
    return any(target == rule or target.startswith(rule + ".") for rule in banned)


def test_static_imports_follow_the_rules() -> None:
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        owner = _owner(path)
        for line, target in _imports(path):
            if _forbidden(owner, target):
                broken.append(f"{path.relative_to(ROOT)}:{line} imports blueprint.{target}")
    assert not broken, "layering broken:\n" + "\n".join(broken)


_PROBE = """
import importlib, json, pkgutil, sys
name = sys.argv[1]
optional = set(sys.argv[2].split(","))
module = importlib.import_module(name)
skipped = []
for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
    try:
        importlib.import_module(info.name)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in optional:
            raise
        skipped.append(info.name)
print(json.dumps({"loaded": sorted(m for m in sys.modules if m.startswith("blueprint.")),
                  "skipped": skipped}))
"""


@pytest.mark.parametrize("package", sorted(RULES))
def test_importing_a_package_loads_nothing_it_must_not(package: str) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, f"blueprint.{package}", ",".join(OPTIONAL)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.splitlines()[-1])["loaded"]
    mine = f"blueprint.{package}"
    outside = {name.removeprefix("blueprint.") for name in loaded
               if name != mine and not name.startswith(mine + ".")}
    broken = sorted(name for name in outside if _forbidden(package, name))
    assert not broken, f"importing {mine} loads {broken}"


def test_the_rules_test_catches_a_breach() -> None:
    """The checks can fail: a server module importing the chain SDK is a breach."""
    assert _forbidden("server", "tangle.chain")
    assert _forbidden("tangle", "llm.types")
    assert _forbidden("server", "quoting.quoter") and not _forbidden("server", "quoting.wire")
    assert _forbidden("assembly", "commands.run") and not _forbidden("cli", "commands.run")
    assert _forbidden("runner", "errors")
    assert not _forbidden("jobs", "llm.types")
