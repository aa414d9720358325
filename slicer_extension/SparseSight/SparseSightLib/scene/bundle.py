"""A result bundle -> one subject-hierarchy folder of nodes, each built by the module of its output kind."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .labelmap import add_labelmap
from .mrml import (
    ATTR,
    MANIFEST,
    SceneError,
    children,
    folder,
    place,
    subject_hierarchy,
    tag,
)
from .plot import add_plot
from .scalar import add_scalar
from .table import add_table

#: the bundle format this module reads (sparsesight.bundle.FORMAT; a unit test keeps the two equal)
FORMAT = 2


def format_note(manifest: dict) -> str | None:
    """What a reader should be told about a bundle of another format than FORMAT, None when it is current."""
    try:
        fmt = int(manifest.get("format", 1))
    except (TypeError, ValueError):
        return f"the bundle's format {manifest.get('format')!r} is not a number: it may not be shown correctly"
    if fmt < FORMAT:
        return (f"the bundle was written by an older SparseSight (format {fmt}, this reader's is {FORMAT}): its maps "
                f"carry no explanation-quality figures, so none of them is flagged; run the model again for those")
    if fmt > FORMAT:
        return (f"the bundle was written by a newer SparseSight (format {fmt}, this reader's is {FORMAT}): outputs "
                f"or figures this reader does not know are not shown; update the module")
    return None


@dataclass
class Inference:
    """The nodes of one bundle in a scene: {output name: node}, its subject-hierarchy folder and manifest."""

    folder: int
    nodes: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)




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
            tag(node, entry, m)
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
