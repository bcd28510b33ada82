"""Fixtures of the engine tests.

* ``engine``: one started transformers engine on the tiny model per test module (module scope:
  its worker thread outlives each test's event loop; each module still gets its own engine).
* ``engine_slots``: that engine's ``max_batch_size`` and ``max_queue``; a module overrides it
  when its tests need more concurrent requests than the default.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from blueprint.llm.config import NodeConfig
from blueprint.llm.engines.transformers import TransformersClient
from tests.devices import TEST_DEVICE

MODEL = "tiny"


@pytest.fixture(scope="module")
def engine_slots() -> int:
    return 8


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, engine_slots: int) -> Iterator[TransformersClient]:
    client = TransformersClient(NodeConfig(model=MODEL, path=str(tiny_model_dir), device=TEST_DEVICE,
                                           dtype="float32",  # what the tests compare, on any device
                                           max_batch_size=engine_slots, max_queue=engine_slots))
    asyncio.run(client.start())
    yield client
    asyncio.run(client.close())
