"""MRML plumbing shared by every output kind: the scene and MRB files, the subject hierarchy, reading a volume
by Slicer's NIfTI reader, voxel arrays and the SparseSight.* attributes on nodes."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import slicer
import vtk

ATTR = "SparseSight."
MANIFEST = "manifest.json"


class SceneError(Exception):
    """A bundle or a segmentation that cannot be turned into nodes (or back into a label); the message says why."""



def new_scene():
    """A scene outside the Slicer application (tests, scripts) with Slicer's default colour nodes and the cache
    that MRB reading needs. Inside Slicer use slicer.mrmlScene instead."""
    scene = slicer.vtkMRMLScene()
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(tempfile.mkdtemp(prefix="sparsesight-mrml-cache-"))
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(io_manager)
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)  # adds the default colour nodes (Grey, Iron, fMRI, ...)
    scene._sparsesight_keep = colors  # the logic must live as long as the scene
    return scene


def save_mrb(scene, path) -> Path:
    """Save the whole scene with its data as a Medical Reality Bundle (.mrb)."""
    path = Path(path)
    if not scene.WriteToMRB(str(path)):
        raise SceneError(f"could not write the scene to {path}")
    return path


def load_mrb(path, scene=None):
    """Read an .mrb into `scene` (a new one by default) and return the scene."""
    scene = scene or new_scene()
    if not scene.ReadFromMRB(str(path)):
        raise SceneError(f"could not read the scene bundle {path}")
    return scene


def subject_hierarchy(scene):
    return slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)


def folder(scene, name: str, parent: int | None = None, **attributes) -> int:
    """The subject-hierarchy folder `name` under `parent` (the scene by default), created when missing."""
    sh = subject_hierarchy(scene)
    parent = sh.GetSceneItemID() if parent is None else parent
    item = sh.GetItemChildWithName(parent, name)
    if not item:
        item = sh.CreateFolderItem(parent, name)
    for k, v in attributes.items():
        sh.SetItemAttribute(item, ATTR + k, str(v))
    return item


def place(scene, node, parent: int) -> int:
    """Put `node` into subject-hierarchy folder `parent` (Slicer creates items itself; slicer-core does not)."""
    sh = subject_hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:
        item = sh.CreateItem(parent, node)
    return item


def children(scene, item: int, recursive: bool = False) -> list[int]:
    sh = subject_hierarchy(scene)
    ids = vtk.vtkIdList()
    sh.GetItemChildren(item, ids, recursive)
    return [ids.GetId(i) for i in range(ids.GetNumberOfIds())]


def ijk_to_ras(node) -> list[list[float]]:
    """The 4x4 IJK-to-RAS matrix of a volume node (the NIfTI affine of a volume Slicer read)."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return [[m.GetElement(i, j) for j in range(4)] for i in range(4)]




def tag(node, entry: dict, manifest: dict):
    node.SetAttribute(ATTR + "output", entry["name"])
    node.SetAttribute(ATTR + "kind", entry["kind"])
    for key in ("model", "model_version", "image"):
        node.SetAttribute(ATTR + key, str(manifest.get(key, "")))
    meta = {k: v for k, v in entry.items() if k not in ("name", "file", "kind")}
    node.SetAttribute(ATTR + "meta", json.dumps(meta))
    flags = quality_flags(entry)
    node.SetAttribute(ATTR + "flags", json.dumps(flags))
    lines = [str(entry["description"])] if entry.get("description") else []
    lines += [f"FLAGGED: {f}" for f in flags]  # a failed check is said where Slicer shows the node (Data module)
    if lines:
        node.SetDescription("\n".join(lines))


def quality_flags(entry: dict) -> list[str]:
    """Every flag of an output's measurement objects (its entries that are objects: `quality`, ...), in order."""
    out: list[str] = []
    for value in entry.values():
        if isinstance(value, dict):
            out += [str(f) for f in value.get("flags") or [] if isinstance(f, str)]
    return out


def read_volume(scene, path, name: str, node_class: str = "vtkMRMLScalarVolumeNode"):
    """A volume node read from a NIfTI file by Slicer's reader; the temporary storage node is dropped so saving
    the scene writes the data afresh."""
    node = scene.AddNewNodeByClass(node_class, name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    ok = storage.ReadData(node)
    scene.RemoveNode(storage)
    if not ok or node.GetImageData() is None:
        scene.RemoveNode(node)
        raise SceneError(f"Slicer could not read {Path(path).name} as a 3D volume")
    return node




def array_from_volume(node):
    """(I, J, K[, C]) numpy copy of a volume node's voxels, in IJK order (slicer.util's is KJI)."""
    import numpy as np
    from vtk.util import numpy_support

    image = node.GetImageData()
    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    comps = scalars.GetNumberOfComponents()
    a = numpy_support.vtk_to_numpy(scalars).reshape(dims[::-1] + ((comps,) if comps > 1 else ()))
    return np.ascontiguousarray(np.swapaxes(a, 0, 2))
