"""Plot outputs -> vtkMRMLVectorVolumeNode (the RGBA picture; Slicer shows it in a slice view, upright in Red)."""
from __future__ import annotations

import vtk

from .mrml import SceneError


def add_plot(scene, path, name: str):
    """A PNG as an RGBA vector volume (1 mm pixels); its IJK-to-RAS shows it upright in the axial (Red) view."""
    from vtkmodules.vtkIOImage import vtkPNGReader

    reader = vtkPNGReader()
    if not reader.CanReadFile(str(path)):
        raise SceneError(f"{name}: not a PNG picture")
    reader.SetFileName(str(path))
    reader.Update()
    image = vtk.vtkImageData()
    image.DeepCopy(reader.GetOutput())
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", name)
    node.SetAndObserveImageData(image)
    # columns to screen right, rows (bottom first) upwards in the Red view; right-handed so NRRD keeps it as is
    node.SetIJKToRASDirections(-1, 0, 0, 0, 1, 0, 0, 0, -1)
    node.CreateDefaultDisplayNodes()
    return node
