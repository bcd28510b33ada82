"""Root fixtures shared by every test package (keep this file small; add fixtures below)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# No test may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Property tests and the OpenAPI fuzz (schemathesis runs on hypothesis) draw the same examples on
# every run by default, so the gate is reproducible: a red run is red again on a rerun, with the
# same example. `HYPOTHESIS_PROFILE=explore` draws fresh examples on each run, to hunt for new bugs.
settings.register_profile("gate", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gate"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama-style model + byte-level BPE tokenizer with a chat template, built
    offline once per session (see ``blueprint.testing.build_tiny_model``)."""
    from blueprint.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
