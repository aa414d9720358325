"""Labelmap outputs -> vtkMRMLSegmentationNode with class names and colours, and a segmentation back to a
label NIfTI on the input's grid (`export_label`)."""
from __future__ import annotations

import json
from pathlib import Path

import slicer
import vtk

from .mrml import ATTR, SceneError, array_from_volume, ijk_to_ras, read_volume

#: class colours by class value (1, 2, ...), used when the bundle gives none: BraTS-like green, yellow, red, ...
PALETTE = [(0.50, 0.68, 0.30), (0.95, 0.84, 0.33), (0.86, 0.24, 0.20), (0.26, 0.52, 0.85), (0.64, 0.35, 0.73),
           (0.96, 0.56, 0.16), (0.35, 0.78, 0.78), (0.85, 0.44, 0.66)]



def class_colors(entry: dict) -> dict:
    """{class value: (r, g, b) in 0..1} of a labelmap entry: its `colors`/`colours` (0..1 or 0..255) or PALETTE."""
    given = entry.get("colors") or entry.get("colours") or {}
    out = {}
    for k in entry["classes"]:
        c = given.get(str(k))
        if c is not None:
            c = [float(x) for x in c[:3]]
            out[int(k)] = tuple(x / 255.0 for x in c) if max(c) > 1 else tuple(c)
        else:
            out[int(k)] = PALETTE[(int(k) - 1) % len(PALETTE)]
    return out




def _class_table(scene, classes: dict, colors: dict, name: str):
    """A colour table whose entry k is class k (name and colour), index 0 background."""
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    table.SetTypeToUser()
    table.SetNumberOfColors(max(int(k) for k in classes) + 1)
    table.SetColor(0, "background", 0, 0, 0, 0)
    for k, cname in classes.items():
        table.SetColor(int(k), cname, *colors[int(k)], 1.0)
    return table


def _empty_labelmap_like(volume):
    """An all-zero binary labelmap on `volume`'s grid (an empty segment that still exports to that geometry)."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(volume.GetImageData().GetDimensions())
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().Fill(0)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def add_labelmap(scene, path, name: str, entry: dict, affine=None):
    """A segmentation node with one segment per class (empty classes included, so they can be painted).
    `affine`: the input's NIfTI affine (the manifest's), kept so that export_label writes voxels in its order."""
    classes = {int(k): str(v) for k, v in entry["classes"].items()}
    colors = class_colors(entry)
    label = read_volume(scene, path, name + " labelmap", "vtkMRMLLabelMapVolumeNode")
    table = _class_table(scene, classes, colors, name + " classes")
    try:
        label.CreateDefaultDisplayNodes()
        label.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(label)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, seg):
            raise SceneError(f"{name}: Slicer could not import the labelmap")
        empty = _empty_labelmap_like(label)
    finally:
        for node in (label.GetDisplayNode(), label, table):
            if node is not None:
                scene.RemoveNode(node)
    segmentation = seg.GetSegmentation()
    present = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if not segmentation.GetSourceRepresentationName():  # an all-background label imports no representation
        segmentation.SetSourceRepresentationName(labelmap_name)
    for k, cname in sorted(classes.items()):
        if cname not in present:
            # an empty segment built by hand: AddEmptySegment needs a converter rule that a bare scene may lack
            segment = slicer.vtkSegment()
            segment.SetName(cname)
            segment.SetColor(*colors[k])
            blank = slicer.vtkOrientedImageData()
            blank.DeepCopy(empty)
            segment.AddRepresentation(labelmap_name, blank)
            if not segmentation.AddSegment(segment, cname):
                raise SceneError(f"{name}: could not add the empty segment {cname!r}")
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        k = next(k for k, v in classes.items() if v == segment.GetName())
        segment.SetColor(*colors[k])
        segment.SetTag(ATTR + "class", str(k))
    seg.SetAttribute(ATTR + "classes", json.dumps({str(k): v for k, v in classes.items()}))
    if affine is not None:
        seg.SetAttribute(ATTR + "affine", json.dumps([list(map(float, r)) for r in affine]))
    return seg




def regrid(array, src_affine, dst_affine):
    """`array` on grid `src_affine`, re-indexed onto `dst_affine` when the two grids are the same voxels in
    another axis order or direction (ITK stores left-handed NIfTI grids with the last axis reversed).
    Returns None when they are not the same voxels."""
    import numpy as np

    P = np.linalg.inv(np.asarray(dst_affine, float)) @ np.asarray(src_affine, float)  # src ijk -> dst ijk
    R, t = np.rint(P[:3, :3]), np.rint(P[:3, 3])
    if not (np.allclose(P[:3, :3], R, atol=1e-3) and np.allclose(P[:3, 3], t, atol=1e-3)
            and (np.abs(R).sum(0) == 1).all() and (np.abs(R).sum(1) == 1).all()):
        return None
    shape = np.abs(R) @ np.array(array.shape[:3])
    d = np.stack(np.meshgrid(*[np.arange(int(n)) for n in shape], indexing="ij"), -1)
    s = np.rint((d - t) @ np.linalg.inv(R).T).astype(int)  # dst voxel -> src voxel
    if (s < 0).any() or (s >= np.array(array.shape[:3])).any():
        return None
    return array[s[..., 0], s[..., 1], s[..., 2]]


def write_label(scene, array, affine, path) -> Path:
    """Write a uint8 (I, J, K) class map with `affine` (IJK to RAS) as NIfTI through Slicer's writer."""
    import numpy as np
    from vtk.util import numpy_support

    array = np.ascontiguousarray(np.asarray(array, dtype=np.uint8))
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.swapaxes(array, 0, 2).ravel(), deep=True,
                                                               array_type=vtk.VTK_UNSIGNED_CHAR))
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__sparsesight_label_out__")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        node.SetAndObserveImageData(image)
        m = vtk.vtkMatrix4x4()
        for i in range(4):
            for j in range(4):
                m.SetElement(i, j, float(affine[i][j]))
        node.SetIJKToRASMatrix(m)
        storage.SetFileName(str(path))
        storage.SetUseCompression(True)
        if not storage.WriteData(node):
            raise SceneError(f"could not write the label to {path}")
    finally:
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
    return Path(path)


def export_label(scene, segmentation_node, path, reference_volume=None) -> Path:
    """Write the segmentation as a label NIfTI of class values (the segment tag "SparseSight.class", else the
    class whose name the segment has). Geometry: `reference_volume`'s, default the segmentation's reference
    geometry; voxels are stored in the order of the input's NIfTI affine (kept from the bundle's manifest), so
    the server gets the label voxel for voxel like its image."""
    import numpy as np

    seg = segmentation_node.GetSegmentation()
    classes = json.loads(segmentation_node.GetAttribute(ATTR + "classes") or "{}")
    by_name = {v: int(k) for k, v in classes.items()}
    values = {}
    for i in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(i)
        tag = vtk.reference("")
        if segment.GetTag(ATTR + "class", tag) and str(tag):
            values[seg.GetNthSegmentID(i)] = int(str(tag))
        elif segment.GetName() in by_name:
            values[seg.GetNthSegmentID(i)] = by_name[segment.GetName()]
        else:
            raise SceneError(f"segment {segment.GetName()!r} is not one of the classes "
                             f"{sorted(by_name, key=by_name.get)}; rename it to one of them or delete it")
    if not values:
        raise SceneError("the segmentation has no segments")
    top = max(values.values())
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "__sparsesight_export__")
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__sparsesight_label__")
    try:
        table.SetTypeToUser()
        table.SetNumberOfColors(top + 1)
        for j in range(top + 1):
            table.SetColor(j, f"__unused_{j}", 0, 0, 0, 0)
        ids = vtk.vtkStringArray()
        for sid, k in values.items():
            ids.InsertNextValue(sid)
            table.SetColorName(k, seg.GetSegment(sid).GetName())
        mode = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, label, reference_volume, mode, table):
            raise SceneError("Slicer could not export the segmentation to a labelmap")
        array, affine = array_from_volume(label), ijk_to_ras(label)
    finally:
        for node in (label.GetDisplayNode(), label, table):
            if node is not None:
                scene.RemoveNode(node)
    target = segmentation_node.GetAttribute(ATTR + "affine")
    if target:
        moved = regrid(array, affine, json.loads(target))
        if moved is not None:
            array, affine = moved, json.loads(target)
    if array.max() > 255:
        raise SceneError(f"class values up to {array.max()} do not fit a uint8 label")
    return write_label(scene, np.asarray(array), affine, path)
