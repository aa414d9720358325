"""Scalar outputs -> vtkMRMLScalarVolumeNode with a colour map and window (`display_for`); images in and out."""
from __future__ import annotations

from pathlib import Path

from .mrml import ATTR, SceneError, array_from_volume, read_volume

#: colour maps SparseSight defines (anchor colours from the low to the high end of the window)
COLORMAPS = {
    "probability": ("SparseSight probability", [(0, 0, 0), (0.7, 0, 0), (1, 0.55, 0), (1, 1, 0.3), (1, 1, 1)]),
    "signed": ("SparseSight diverging", [(0.02, 0.19, 0.38), (0.26, 0.58, 0.78), (1, 1, 1), (0.84, 0.38, 0.30),
                                         (0.40, 0.0, 0.12)]),
}
COLORMAPS["diverging"] = COLORMAPS["signed"]
GREY = "vtkMRMLColorTableNodeGrey"


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




def read_image(scene, path, name: str, channel_names=None) -> list:
    """The channels of a (4D) image file as scalar volume nodes, read as Slicer reads a 4D NIfTI (a sequence)."""
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    storage.SetFileName(str(path))
    # slicer-core 5.11 (the browser viewer's) reads 4D NRRD but no 4D NIfTI as a sequence
    ok = bool(storage.SupportedFileType(str(path))) and storage.ReadData(seq)
    scene.RemoveNode(storage)
    if not ok or seq.GetNumberOfDataNodes() == 0:
        scene.RemoveNode(seq)
        volumes = _read_channels_split(scene, path, name)
    else:
        volumes = []
        for i in range(seq.GetNumberOfDataNodes()):
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{name} {i}")
            node.CopyContent(seq.GetNthDataNode(i))
            volumes.append(node)
        scene.RemoveNode(seq)
    nodes = []
    for i, node in enumerate(volumes):
        cname = channel_names[i] if channel_names and i < len(channel_names) else str(i)
        node.SetName(f"{name} {cname}")
        node.SetAttribute(ATTR + "image", name)
        node.SetAttribute(ATTR + "channel", str(i))
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetAndObserveColorNodeID(GREY)
        node.GetDisplayNode().AutoWindowLevelOn()
        nodes.append(node)
    return nodes


def _read_channels_split(scene, path, name: str) -> list:
    """The channels of a 4D NIfTI as volumes read by Slicer's 3D NIfTI reader: each channel is written as a 3D
    NIfTI with the same header (nibabel) and read like a bundle's volumes, so the geometry is Slicer's own.
    Used where Slicer's sequence reader cannot read 4D NIfTI (slicer-core 5.11, the browser viewer's)."""
    import shutil
    import tempfile

    try:
        import nibabel as nib
    except ImportError:
        raise SceneError(f"Slicer could not read {Path(path).name} as an image") from None
    try:
        img = nib.load(str(path))
        data = img.dataobj
        shape = img.shape
    except Exception as e:  # nibabel's errors are many kinds
        raise SceneError(f"{Path(path).name} is not a readable NIfTI image: {e}") from None
    tmp = Path(tempfile.mkdtemp(prefix="sparsesight-channels-"))
    nodes = []
    try:
        for i in range(shape[3] if len(shape) == 4 else 1):
            array = data[..., i] if len(shape) == 4 else data[...]
            header = img.header.copy()
            channel = nib.Nifti1Image(array, img.affine, header)
            channel.set_qform(img.get_qform(), int(img.header["qform_code"]))
            channel.set_sform(img.get_sform(), int(img.header["sform_code"]))
            file = tmp / f"channel{i}.nii.gz"
            nib.save(channel, str(file))
            nodes.append(read_volume(scene, file, f"{name} {i}"))
    except BaseException:
        for node in nodes:
            scene.RemoveNode(node)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
