"""Table outputs -> vtkMRMLTableNode (numeric columns as numbers)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import vtk

from .mrml import SceneError


def add_table(scene, path, name: str):
    """A table node from a CSV; a column whose every cell is a number becomes a numeric column."""
    rows = list(csv.reader(io.StringIO(Path(path).read_text())))
    if not rows:
        raise SceneError(f"{name}: empty table")
    header, body = rows[0], rows[1:]
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    for j, col in enumerate(header):
        cells = [r[j] if j < len(r) else "" for r in body]
        try:
            values = [float(c) for c in cells]
            arr = vtk.vtkDoubleArray()
            for v in values:
                arr.InsertNextValue(v)
        except ValueError:
            arr = vtk.vtkStringArray()
            for c in cells:
                arr.InsertNextValue(c)
        arr.SetName(col)
        node.AddColumn(arr)
    node.SetUseColumnTitleAsColumnHeader(True)
    return node
