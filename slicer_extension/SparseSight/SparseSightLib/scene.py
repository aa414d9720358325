"""Result bundle -> MRML nodes (no Qt: runs in Slicer and on slicer-core alike).

Every output of a bundle (DESIGN.md, "Result bundle") becomes the node Slicer shows it with, chosen only by the
output's `kind` and metadata, never by its name, so new outputs of new models appear without code changes:

    labelmap -> vtkMRMLSegmentationNode: one segment per entry of `classes` (name, colour from `colors`/`colours`
                or the class palette below), the class value kept as the segment tag "SparseSight.class"
    scalar   -> vtkMRMLScalarVolumeNode with a colour map and window chosen by `display_for`:
                `colormap` "probability" -> heat map, window 0..1; "signed"/"diverging" (or an attribution map,
                i.e. an entry with `method`, holding negative values) -> blue-white-red centred on 0;
                the name of any colour node in the scene (e.g. "Iron", "fMRI") -> that node; else grey.
                Window: `window` if given, else one that holds 99.5 % of the voxels (within `range`)
    table    -> vtkMRMLTableNode (numeric columns as numbers)
    plot     -> vtkMRMLVectorVolumeNode (the RGBA picture; Slicer shows it in a slice view, upright in Red)

Volumes are read through Slicer's own NIfTI reader (vtkMRMLVolumeArchetypeStorageNode), so their geometry is the
input's (NIfTI affine, RAS) exactly as Slicer loads the input itself. One subject-hierarchy folder per inference
(under a folder per image) holds the nodes; each node and the folder carry "SparseSight.*" attributes (output name,
kind, model, version, metadata as JSON) that survive saving the scene as an MRB.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import slicer
import vtk

ATTR = "SparseSight."
MANIFEST = "manifest.json"

#: class colours by class value (1, 2, ...), used when the bundle gives none: BraTS-like green, yellow, red, ...
PALETTE = [(0.50, 0.68, 0.30), (0.95, 0.84, 0.33), (0.86, 0.24, 0.20), (0.26, 0.52, 0.85), (0.64, 0.35, 0.73),
           (0.96, 0.56, 0.16), (0.35, 0.78, 0.78), (0.85, 0.44, 0.66)]

#: colour maps SparseSight defines (anchor colours from the low to the high end of the window)
COLORMAPS = {
    "probability": ("SparseSight probability", [(0, 0, 0), (0.7, 0, 0), (1, 0.55, 0), (1, 1, 0.3), (1, 1, 1)]),
    "signed": ("SparseSight diverging", [(0.02, 0.19, 0.38), (0.26, 0.58, 0.78), (1, 1, 1), (0.84, 0.38, 0.30),
                                         (0.40, 0.0, 0.12)]),
}
COLORMAPS["diverging"] = COLORMAPS["signed"]
GREY = "vtkMRMLColorTableNodeGrey"


class SceneError(Exception):
    """A bundle or a segmentation that cannot be turned into nodes (or back into a label); the message says why."""


@dataclass
class Inference:
    """The nodes of one bundle in a scene: {output name: node}, its subject-hierarchy folder and manifest."""

    folder: int
    nodes: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- scene
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


# ---------------------------------------------------------------------------------------------- bundle files
class _BundleFiles:
    """A bundle zip or directory: its manifest and its members extracted on demand into a private folder."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            if self.path.is_dir():
                self._zip = None
                self.manifest = json.loads((self.path / MANIFEST).read_text())
            else:
                self._zip = zipfile.ZipFile(self.path)
                self.manifest = json.loads(self._zip.read(MANIFEST))
        except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise SceneError(f"{self.path.name} is not a result bundle (zip or folder with {MANIFEST}): {e}") from None
        if not isinstance(self.manifest.get("outputs"), list):
            raise SceneError(f"{self.path.name}: the manifest lists no outputs")
        self.tmp = Path(tempfile.mkdtemp(prefix="sparsesight-bundle-"))

    def file(self, name: str) -> Path:
        if os.path.basename(name) != name or name.startswith("."):
            raise SceneError(f"bundle file {name!r} is not a plain file name")
        if self._zip is None:
            src = self.path / name
            if not src.is_file():
                raise SceneError(f"bundle lacks {name}")
            return src
        out = self.tmp / name
        try:
            out.write_bytes(self._zip.read(name))
        except KeyError:
            raise SceneError(f"bundle lacks {name}") from None
        return out

    def close(self):
        if self._zip is not None:
            self._zip.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- colours, windows
def _ramp(anchors, n: int = 256):
    """n colours linearly interpolated between equally spaced anchor colours."""
    out = []
    for i in range(n):
        t = i / (n - 1) * (len(anchors) - 1)
        k = min(int(t), len(anchors) - 2)
        f = t - k
        out.append(tuple(a + f * (b - a) for a, b in zip(anchors[k], anchors[k + 1])))
    return out


def color_node(scene, colormap: str | None):
    """The colour node of a manifest `colormap` name (created once per scene for SparseSight's own maps)."""
    key = (colormap or "grey").lower()
    if key in COLORMAPS:
        name, anchors = COLORMAPS[key]
        node = scene.GetFirstNodeByName(name)
        if node is None or not node.IsA("vtkMRMLColorTableNode"):
            node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
            node.SetTypeToUser()
            node.SetNumberOfColors(256)
            for i, c in enumerate(_ramp(anchors)):
                node.SetColor(i, *c, 1.0)
            node.SetAttribute("Category", "SparseSight")
        return node
    if key in ("grey", "gray"):
        return scene.GetNodeByID(GREY)
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorNode")):  # any colour node of the scene by name
        node = scene.GetNthNodeByClass(i, "vtkMRMLColorNode")
        if (node.GetName() or "").lower() == key:
            return node
    return scene.GetNodeByID(GREY)


#: share of the voxels inside the window of maps without fixed bounds (a few extreme voxels must not grey it out)
ROBUST = 0.995


def display_for(entry: dict, data_range, values=None) -> tuple[str, float, float]:
    """(colour map key, window low, window high) of a scalar output from its metadata (see module docstring).

    An explicit `window` [low, high] wins. Probability maps get 0..1. Signed maps get a window centred on 0 that
    holds ROBUST of the voxels' magnitudes (all of `range` without `values`); other maps the central ROBUST of the
    values, within `range`."""
    lo, hi = (entry.get("range") or data_range)[:2]
    lo, hi = float(lo), float(hi)
    cmap = (entry.get("colormap") or "").lower()
    if not cmap:
        cmap = "signed" if entry.get("method") and lo < 0 < hi else "grey"
    if entry.get("window"):
        return cmap, float(entry["window"][0]), float(entry["window"][1])
    if cmap == "probability":
        return cmap, 0.0, 1.0
    finite = None
    if values is not None:
        import numpy as np

        finite = np.asarray(values, dtype=np.float64).ravel()
        finite = finite[np.isfinite(finite)]
        finite = finite if finite.size else None
    if cmap in ("signed", "diverging"):
        m = max(abs(lo), abs(hi))
        if finite is not None:
            import numpy as np

            m = float(np.quantile(np.abs(finite), ROBUST)) or m
        m = m or 1.0
        return cmap, -m, m
    if finite is not None:
        import numpy as np

        q_lo, q_hi = np.quantile(finite, [(1 - ROBUST) / 2, (1 + ROBUST) / 2])
        lo, hi = max(lo, float(q_lo)), min(hi, float(q_hi))
    if hi <= lo:
        hi = lo + 1.0
    return cmap, lo, hi


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


# ---------------------------------------------------------------------------------------------- readers
def _tag(node, entry: dict, manifest: dict):
    node.SetAttribute(ATTR + "output", entry["name"])
    node.SetAttribute(ATTR + "kind", entry["kind"])
    for key in ("model", "model_version", "image"):
        node.SetAttribute(ATTR + key, str(manifest.get(key, "")))
    meta = {k: v for k, v in entry.items() if k not in ("name", "file", "kind")}
    node.SetAttribute(ATTR + "meta", json.dumps(meta))
    if entry.get("description"):
        node.SetDescription(str(entry["description"]))


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


def read_image(scene, path, name: str, channel_names=None) -> list:
    """The channels of a (4D) image file as scalar volume nodes, read as Slicer reads a 4D NIfTI (a sequence)."""
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    storage.SetFileName(str(path))
    ok = storage.ReadData(seq)
    scene.RemoveNode(storage)
    if not ok or seq.GetNumberOfDataNodes() == 0:
        scene.RemoveNode(seq)
        raise SceneError(f"Slicer could not read {Path(path).name} as an image")
    nodes = []
    for i in range(seq.GetNumberOfDataNodes()):
        cname = channel_names[i] if channel_names and i < len(channel_names) else str(i)
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{name} {cname}")
        node.CopyContent(seq.GetNthDataNode(i))
        node.SetName(f"{name} {cname}")
        node.SetAttribute(ATTR + "image", name)
        node.SetAttribute(ATTR + "channel", str(i))
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetAndObserveColorNodeID(GREY)
        node.GetDisplayNode().AutoWindowLevelOn()
        nodes.append(node)
    scene.RemoveNode(seq)
    return nodes


def write_image(scene, channels: list, path) -> Path:
    """Write channel volume nodes (same geometry, in channel order) as one 4D NIfTI, as the server expects."""
    if not channels:
        raise SceneError("no channel volumes to write")
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "__sparsesight_upload__")
    try:
        for i, node in enumerate(channels):
            seq.SetDataNodeAtValue(node, str(i))
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
        storage.SetFileName(str(path))
        ok = storage.WriteData(seq)
        scene.RemoveNode(storage)
    finally:
        scene.RemoveNode(seq)
    if not ok:
        raise SceneError(f"could not write the image to {path} (do the channels share one geometry?)")
    return Path(path)


def add_scalar(scene, path, name: str, entry: dict):
    node = read_volume(scene, path, name)
    node.CreateDefaultDisplayNodes()
    disp = node.GetDisplayNode()
    values = array_from_volume(node).ravel()
    values = values[:: values.size // 2**20 + 1]  # a million voxels estimate the window's quantiles well enough
    cmap, lo, hi = display_for(entry, node.GetImageData().GetScalarRange(), values)
    disp.SetAndObserveColorNodeID(color_node(scene, cmap).GetID())
    disp.AutoWindowLevelOff()
    disp.SetWindowLevelMinMax(lo, hi)
    return node


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


# ---------------------------------------------------------------------------------------------- the bundle
def node_name(manifest: dict, output: str) -> str:
    return f"{manifest.get('model', '?')}: {output}"


def inference_folder_name(manifest: dict) -> str:
    version = str(manifest.get("model_version", ""))
    short = version.split(":")[-1][:8] if version else "?"
    return f"{manifest.get('model', '?')} {short} {manifest.get('created', '')}".strip()


def load_bundle(scene, path, parent: int | None = None, progress=None) -> Inference:
    """Add every output of the bundle at `path` to `scene`, in a new subject-hierarchy folder of this inference
    under the image's folder (itself under `parent`, the scene by default). `progress(i, n, name)` is called
    before each output. Returns the nodes by output name."""
    files = _BundleFiles(path)
    m = files.manifest
    result = None
    try:
        case = folder(scene, str(m.get("image", "image")), parent)
        item = subject_hierarchy(scene).CreateFolderItem(case, inference_folder_name(m))
        sh = subject_hierarchy(scene)
        for key in ("model", "model_version", "image", "created"):
            sh.SetItemAttribute(item, ATTR + key, str(m.get(key, "")))
        sh.SetItemAttribute(item, ATTR + "manifest", json.dumps(m))
        result = Inference(item, {}, m)
        outputs = m["outputs"]
        for i, entry in enumerate(outputs):
            name, kind = entry.get("name"), entry.get("kind")
            if progress:
                progress(i, len(outputs), name)
            local = files.file(entry.get("file", ""))
            title = node_name(m, name)
            if kind == "labelmap":
                if not entry.get("classes"):
                    raise SceneError(f"labelmap {name!r} has no class names")
                node = add_labelmap(scene, local, title, entry, m.get("affine"))
            elif kind == "scalar":
                node = add_scalar(scene, local, title, entry)
            elif kind == "table":
                node = add_table(scene, local, title)
            elif kind == "plot":
                node = add_plot(scene, local, title)
            else:
                raise SceneError(f"output {name!r} has unknown kind {kind!r} (labelmap, scalar, table, plot)")
            _tag(node, entry, m)
            place(scene, node, item)
            result.nodes[name] = node
        return result
    except BaseException:
        _discard(scene, result)  # nothing half-loaded stays in the scene
        raise
    finally:
        files.close()


def _discard(scene, result: Inference | None):
    if result is None:
        return
    for node in result.nodes.values():
        for i in range(node.GetNumberOfDisplayNodes()):
            scene.RemoveNode(node.GetNthDisplayNode(i))
        scene.RemoveNode(node)
    sh = subject_hierarchy(scene)
    if sh.GetItemName(result.folder):
        sh.RemoveItem(result.folder)


def outputs(scene, folder_item: int) -> dict:
    """{output name: node} of an inference folder (also after the scene was saved and read back)."""
    sh = subject_hierarchy(scene)
    out = {}
    for item in children(scene, folder_item):
        node = sh.GetItemDataNode(item)
        if node is not None and node.GetAttribute(ATTR + "output"):
            out[node.GetAttribute(ATTR + "output")] = node
    return out


def inferences(scene) -> list[int]:
    """Subject-hierarchy folders of every inference in the scene, oldest first."""
    sh = subject_hierarchy(scene)
    return [i for i in children(scene, sh.GetSceneItemID(), recursive=True)
            if sh.GetItemAttribute(i, ATTR + "manifest")]


def set_visible(node, visible: bool = True, opacity: float | None = None):
    """Show or hide an output in the views (segmentations and scalar volumes); optionally set its opacity."""
    if node.IsA("vtkMRMLSegmentationNode"):
        disp = node.GetDisplayNode()
        disp.SetVisibility(bool(visible))
        if opacity is not None:
            disp.SetOpacity(float(opacity))
    elif node.IsA("vtkMRMLDisplayableNode"):
        disp = node.GetDisplayNode()
        if disp is not None:
            disp.SetVisibility(bool(visible))
            if opacity is not None and hasattr(disp, "SetOpacity"):
                disp.SetOpacity(float(opacity))


# ---------------------------------------------------------------------------------------------- back to a label
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

