"""Root fixtures shared by every test package (keep this file small; add fixtures below)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama-style model + byte-level BPE tokenizer with a chat template, built
    offline once per session (see ``blueprint.testing.build_tiny_model``)."""
    from blueprint.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
