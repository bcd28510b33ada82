"""Running ``python -m blueprint`` as a user would, in a subprocess, and reading what it said."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: Settings a developer's shell may hold that would change what a command does.
_CLEARED = ("BLUEPRINT_CONFIG", "SERVICE_ID", "BLUEPRINT_ID", "KEYSTORE_URI", "HTTP_RPC_URL",
            "REGISTRATION_MODE_ON", "REGISTRATION_OUTPUT_PATH", "BLUEPRINT_LOG_CONTENT")


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    @property
    def events(self) -> list[dict[str, Any]]:
        """The stderr lines that are JSON log events."""
        return [json.loads(line) for line in self.err_lines if line.startswith("{")]


def blueprint(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 60.0) -> Ran:
    base = {key: value for key, value in os.environ.items() if key not in _CLEARED}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "blueprint", *argv], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd or REPO, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return Ran(proc.returncode, proc.stdout, proc.stderr)
