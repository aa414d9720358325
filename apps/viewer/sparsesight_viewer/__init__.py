"""The browser review viewer (`sparsesight view`, `make view`): a trame-slicer page over a running SparseSight
server. A shell like the Slicer module and the MONAI Label app: it imports the library, never the other way
round (`sparsesight view` starts it as `python -m sparsesight_viewer` with apps/viewer on the path).

It reuses the Slicer module's Qt-free library (slicer_extension/SparseSight/SparseSightLib): the REST client
(`client.py`), the logic (`logic.py`) and the scene builder (`scene/`), so the viewer and the Slicer module read
bundles and build MRML the same way. Modules:

    session.py  what the page shows, without trame: connect, images, inference, overlays, tables, probe, submit
    render.py   tables, plots and colour bars as HTML for the page
    app.py      the trame-slicer page (3 slice views + 3D, side panel, segment editor) and `serve()`
    ui.py       the page's widgets
    __main__.py the command line (`python -m sparsesight_viewer --url ...`)

Headless rendering (no display): VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow with Mesa's llvmpipe; `app.serve`
sets it when nothing else was chosen.
"""
from __future__ import annotations

import sys
from pathlib import Path

#: the Slicer module's folder (holds the SparseSightLib package); the viewer runs from a source checkout
MODULE_DIR = Path(__file__).resolve().parents[3] / "slicer_extension" / "SparseSight"


def use_slicer_module_library() -> None:
    """Make SparseSightLib importable (the one client and scene builder shared with the Slicer module)."""
    if not (MODULE_DIR / "SparseSightLib").is_dir():
        raise RuntimeError(f"the Slicer module's library is not at {MODULE_DIR}; run the viewer from a SparseSight "
                           "source checkout (pip install -e .)")
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
