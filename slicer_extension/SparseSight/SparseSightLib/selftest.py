"""The module's self test on sample data made here (Slicer writers only: no server, no sparsesight import).

`run(scene, workdir)` writes a small result bundle -- a labelmap with 3 classes on a rotated 2 mm grid, a
probability map, a signed map, a table and a PNG plot -- loads it, checks the nodes, exports the label back and
saves and re-reads the scene as an MRB. SparseSightTest runs it inside Slicer; tests/slicer runs it on slicer-core.
"""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import vtk

from . import scene as S

SHAPE = (12, 10, 8)
CLASSES = {"1": "oedema", "2": "non-enhancing core", "3": "enhancing"}


def affine():
    """A right-handed rotated grid (2 x 2.5 x 3 mm) with an offset origin."""
    c, s = math.cos(0.3), math.sin(0.3)
    rot = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    spacing = (2.0, 2.5, 3.0)
    return [[rot[i][j] * spacing[j] for j in range(3)] + [(-20.0, 15.0, 5.0)[i]] for i in range(3)] + [[0, 0, 0, 1]]


def sample_arrays():
    import numpy as np

    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    label = np.zeros(SHAPE, np.uint8)
    label[(i - 6) ** 2 + (j - 5) ** 2 + (k - 4) ** 2 <= 9] = 1
    label[(i - 6) ** 2 + (j - 5) ** 2 + (k - 4) ** 2 <= 4] = 3  # class 2 absent: it must still get a segment
    prob = (label > 0).astype(np.float32) * 0.8 + 0.1
    signed = (i - 6.0) * 0.1
    return label, prob, signed.astype(np.float32)


def _write_volume(scene, array, affine, path, label=False):
    import numpy as np
    from vtk.util import numpy_support

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode")
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    vtype = vtk.VTK_UNSIGNED_CHAR if label else vtk.VTK_FLOAT
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.swapaxes(array, 0, 2).ravel(), deep=True,
                                                               array_type=vtype))
    node.SetAndObserveImageData(image)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, affine[r][c])
    node.SetIJKToRASMatrix(m)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    ok = storage.WriteData(node)
    scene.RemoveNode(storage)
    scene.RemoveNode(node)
    assert ok, f"could not write {path}"


def _write_png(path):
    from vtkmodules.vtkImagingSources import vtkImageCanvasSource2D
    from vtkmodules.vtkIOImage import vtkPNGWriter

    canvas = vtkImageCanvasSource2D()
    canvas.SetScalarTypeToUnsignedChar()
    canvas.SetNumberOfScalarComponents(3)
    canvas.SetExtent(0, 63, 0, 31, 0, 0)
    canvas.SetDrawColor(255, 255, 255)
    canvas.FillBox(0, 63, 0, 31)
    canvas.SetDrawColor(200, 30, 30)
    canvas.FillBox(5, 20, 5, 25)
    writer = vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(canvas.GetOutputPort())
    writer.Write()


def write_sample_bundle(scene, folder) -> Path:
    """A result bundle zip following docs/ARCHITECTURE.md, written with Slicer's own writers."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    label, prob, signed = sample_arrays()
    aff = affine()
    _write_volume(scene, label, aff, folder / "label.nii.gz", label=True)
    _write_volume(scene, prob, aff, folder / "prob.nii.gz")
    _write_volume(scene, signed, aff, folder / "signed.nii.gz")
    (folder / "params.csv").write_text("class,lam1,mu1\noedema,0.1,0.5\nenhancing,-0.2,0.25\n")
    _write_png(folder / "plot.png")
    manifest = {"model": "sample", "model_version": "sha256:0000", "image": "sample_case", "created": "now",
                "affine": aff, "spatial_shape": list(SHAPE),
                "outputs": [{"name": "label", "file": "label.nii.gz", "kind": "labelmap", "classes": CLASSES},
                            {"name": "probability/enhancing", "file": "prob.nii.gz", "kind": "scalar",
                             "colormap": "probability", "range": [0.0, 1.0]},
                            {"name": "attribution/ig/enhancing", "file": "signed.nii.gz", "kind": "scalar",
                             "method": "integrated_gradients", "faithfulness": {"deletion_auc": 0.2}},
                            {"name": "params", "file": "params.csv", "kind": "table"},
                            {"name": "params_plot", "file": "plot.png", "kind": "plot"}]}
    path = folder / "sample_bundle.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        for o in manifest["outputs"]:
            z.write(folder / o["file"], o["file"])
    return path


def run(scene, workdir) -> dict:
    """Load the sample bundle, check it, export the label and round-trip the scene through an MRB.
    Raises AssertionError on the first failed check; returns what it loaded."""
    import numpy as np

    workdir = Path(workdir)
    path = write_sample_bundle(scene, workdir / "bundle")
    result = S.load_bundle(scene, path)
    nodes = result.nodes
    assert set(nodes) == {"label", "probability/enhancing", "attribution/ig/enhancing", "params", "params_plot"}
    seg = nodes["label"].GetSegmentation()
    names = sorted(seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments()))
    assert names == sorted(CLASSES.values()), names
    for name in ("probability/enhancing", "attribution/ig/enhancing"):
        assert np.allclose(S.ijk_to_ras(nodes[name]), affine(), atol=1e-4), name
    disp = nodes["attribution/ig/enhancing"].GetDisplayNode()
    assert math.isclose(disp.GetWindowLevelMin(), -disp.GetWindowLevelMax()), "signed map not centred on 0"
    assert nodes["params"].GetNumberOfRows() == 2
    assert nodes["params_plot"].GetImageData().GetDimensions()[:2] == (64, 32)
    label = S.export_label(scene, nodes["label"], workdir / "exported.nii.gz")
    back = S.read_volume(scene, label, "exported", "vtkMRMLLabelMapVolumeNode")
    assert (S.array_from_volume(back) == sample_arrays()[0]).all(), "exported label differs"
    scene.RemoveNode(back)
    mrb = S.save_mrb(scene, workdir / "scene.mrb")
    again = S.load_mrb(mrb)
    folders = S.inferences(again)
    assert len(folders) == 1 and set(S.outputs(again, folders[-1])) == set(nodes)
    return {"nodes": nodes, "mrb": mrb, "scene": again}
