"""Tests of the Slicer module on slicer-core (real MRML, no Qt).

Makes the module's library (slicer_extension/SparseSight/SparseSightLib) importable, and reuses the real-server
fixture of tests/server/conftest.py (loaded from that file, not copied). When tests/server ran first in the same
session, that fixture hands back the server already running (one server per session).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "slicer_extension" / "SparseSight"
sys.path.insert(0, str(MODULE_DIR))

server_conftest = sys.modules["sparsesight_tests_server_conftest"]  # loaded by tests/conftest.py

server = server_conftest.server  # the session-wide real MONAI Label server (see tests/server/conftest.py)
pytest_runtest_makereport = server_conftest.pytest_runtest_makereport  # server log tail on failures


@pytest.fixture
def fast_train() -> dict:
    """The server tests' small training configuration (seconds per CPU epoch)."""
    return dict(server_conftest.FAST_TRAIN)


@pytest.fixture
def mrml():
    """A fresh MRML scene with Slicer's default colour nodes."""
    from SparseSightLib import scene

    return scene.new_scene()
