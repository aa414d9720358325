"""The architecture's rules that code can break silently (docs/ARCHITECTURE.md)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sparsesight
from sparsesight import models, runners, server
from sparsesight.errors import UnknownModel

LIB = Path(sparsesight.__file__).parent
#: the shells' packages: the library is imported by them, never the other way round
FORBIDDEN = {"monailabel", "fastapi", "starlette", "slicer", "qt", "vtk", "SparseSightLib"}


def imported_roots(path: Path) -> set[str]:
    """Top-level package of every import in a file (also those inside functions); relative imports excluded."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_library_imports_neither_the_server_nor_slicer():
    offenders = {str(p.relative_to(LIB)): sorted(imported_roots(p) & FORBIDDEN) for p in LIB.rglob("*.py")}
    assert {p: r for p, r in offenders.items() if r} == {}


def test_the_scan_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from monailabel.interfaces import app\n    import slicer.util\n")
    assert imported_roots(f) == {"monailabel", "slicer"}


def test_every_model_has_a_runner_that_keeps_the_protocol():
    for name in models.NAMES:
        r = runners.get(name)
        assert isinstance(r, runners.Runner), name
        assert r.__name__ == f"sparsesight.runners.{name}"
        assert isinstance(r.default_train_config(), dict) and r.BUNDLE_OUTPUTS
    with pytest.raises(UnknownModel, match="known models"):
        runners.get("segresnet")


def test_the_server_finds_the_app_by_environment_or_repository_layout(tmp_path, monkeypatch):
    monkeypatch.delenv(server.APP_DIR_ENV, raising=False)
    assert server.default_app_dir() == LIB.parents[1] / "apps" / "sparsesight"
    monkeypatch.setenv(server.APP_DIR_ENV, str(tmp_path))
    assert server.default_app_dir() == tmp_path
    monkeypatch.setenv(server.APP_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=server.APP_DIR_ENV):
        server.default_app_dir()
