"""What a local model directory says about itself before any weight is loaded (no torch import),
so that ``register`` can offer a model's real limits without loading it."""

from __future__ import annotations

import json
from pathlib import Path


def config_context_length(path: str | Path | None) -> int | None:
    """``max_position_embeddings`` from ``<path>/config.json`` (also under ``text_config``), or
    None when ``path`` is not a local model directory with one (e.g. a Hugging Face id)."""
    if not path:
        return None
    try:
        data = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    text_config = data.get("text_config")
    value = data.get("max_position_embeddings") or (
        text_config.get("max_position_embeddings") if isinstance(text_config, dict) else None)
    return int(value) if isinstance(value, int) and value > 0 else None
