"""The torch device the in-process engine tests run on.

CPU everywhere by default (CI has no GPU). ``BLUEPRINT_TEST_DEVICE=cuda`` runs the same engine and
server tests on a GPU, which is how ``bench/gpu.sh`` checks the CUDA path on a machine that has one.
"""

from __future__ import annotations

import os

TEST_DEVICE = os.environ.get("BLUEPRINT_TEST_DEVICE", "cpu")
