"""Loaded by pytest before any test folder's own conftest: tests/server/conftest.py (the real-server handle
`Rest`/`Server`, `make_datastore`, `start`, the session server fixture and its log-tail report hook) is imported
once under SERVER_CONFTEST, so that tests/slicer, tests/viewer, tests/pacs and tests/reliability reuse it from
`sys.modules[SERVER_CONFTEST]` instead of copying it."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SERVER_CONFTEST = "sparsesight_tests_server_conftest"

if SERVER_CONFTEST not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        SERVER_CONFTEST, Path(__file__).resolve().parent / "server" / "conftest.py")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[SERVER_CONFTEST] = _module  # dataclasses look their module up there
    _spec.loader.exec_module(_module)
