"""The CLI's face and the README's promises that code can check."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from blueprint.cli import COMMANDS
from blueprint.commands.config import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "blueprint", "--help"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    for name in ("run", "dev", "serve", "deploy", "register", "operators", "submit", "config"):
        assert name in COMMANDS
        assert re.search(rf"^\s+{name}\b", out, re.MULTILINE), name


def test_readme_config_reference_is_generated_from_the_model() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- config-reference:start -->")[1].split("<!-- config-reference:end -->")[0]
    assert block.strip() == reference_markdown().strip(), (
        "README's configuration reference is stale: paste `python -m blueprint config --reference`"
    )


def test_readme_quick_start_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/dev.sh" in readme and "bash scripts/test.sh" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    assert "pytest" in (ROOT / "scripts" / "test.sh").read_text()
