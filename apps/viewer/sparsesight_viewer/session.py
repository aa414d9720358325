"""What the review page shows, without trame: one image of the server's datastore, its result bundles as MRML
nodes (built by the Slicer module's scene code through its logic), the tables, plots and metrics of a bundle,
the values of every map at a point, and the annotator's actions (submit, next sample, training).

Everything goes through SparseSightLib (the Slicer module's Qt-free client, logic and scene builder), so what the
browser shows is what the Slicer module shows. Errors meant for the user are raised as ServerError / SceneError
(`message(exc)` words them)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sparsesight import CLASSES

from . import use_slicer_module_library

use_slicer_module_library()

from SparseSightLib import scene as S  # noqa: E402
from SparseSightLib.client import FINAL, ServerError  # noqa: E402
from SparseSightLib.logic import MODALITIES, SparseSightLogicCore, TrainingState, message  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["FINAL", "MODALITIES", "Overlay", "ReviewSession", "ServerError", "TrainingState", "message"]

#: words of an entry that say what a map explains (an attribution map's class and region: the voxels labelled so,
#: all, or a voxel or point a user picked), shown beside its figures
_WHAT_KEYS = {"target", "region"}
#: metadata keys of an output that describe its display, not a measurement
_DISPLAY_KEYS = {"range", "window", "classes", "colors", "colours", "colormap", "modalities", "description", "method",
                 "unit", "units", "shape", "dtype", "model", "model_version", "image"}


@dataclass
class Overlay:
    """A scalar output shown over the image: its output name, node and what its values mean."""

    name: str
    node: object
    description: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def unit(self) -> str:
        return str(self.meta.get("unit") or self.meta.get("units") or "")


def _meta(node) -> dict:
    try:
        return json.loads(node.GetAttribute(S.ATTR + "meta") or "{}")
    except ValueError:
        return {}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class ReviewSession:
    """`ReviewSession(scene)`: connect, open an image, run a model, read what the bundle holds, submit the label."""

    def __init__(self, scene, workdir=None):
        self.scene = scene
        self.logic = SparseSightLogicCore(scene, workdir=workdir)
        self.image_id: str | None = None
        self.channels: list = []
        self.run: S.Inference | None = None
        self.stored_label = None  # the datastore's final label of the open image (a segmentation), if any
        self.notes: list[str] = []  # what the last bundle lacked (said on the page)

    # ------------------------------------------------------------------ server
    def connect(self, url: str, token: str | None = None) -> dict:
        return self.logic.connect(url, token=token or None)

    @property
    def connected(self) -> bool:
        return bool(self.logic.info)

    def images(self) -> list[dict]:
        """[{"id", "labels": [tags]}] of the datastore, sorted by id."""
        objects = self.logic._server().datastore()
        return [{"id": k, "labels": sorted(v.get("labels", {}))} for k, v in sorted(objects.items())]

    def models(self) -> list[str]:
        return self.logic.models()

    def strategies(self) -> list[str]:
        return self.logic.strategies()

    # ------------------------------------------------------------------ image and bundles
    def _drop_image(self):
        if self.image_id is None:
            return
        sh = S.subject_hierarchy(self.scene)
        item = sh.GetItemChildWithName(sh.GetSceneItemID(), self.image_id)
        if item:  # the image's channels and every bundle loaded for it, in one batch (one update of the views)
            nodes = [sh.GetItemDataNode(i) for i in S.children(self.scene, item, recursive=True)]
            self.scene.StartState(self.scene.BatchProcessState)
            try:
                for node in nodes:
                    if node is not None:
                        for other in _owned_nodes(node):
                            self.scene.RemoveNode(other)
                        self.scene.RemoveNode(node)
                sh.RemoveItem(item, False, True)
            finally:
                self.scene.EndState(self.scene.BatchProcessState)
        self.image_id, self.channels, self.run, self.notes, self.stored_label = None, [], None, [], None

    def open_image(self, image_id: str) -> list:
        """Download `image_id` (one volume per modality); the previous image and its bundles leave the scene."""
        if not image_id:
            raise ServerError("choose an image first")
        self._drop_image()
        self.channels = self.logic.load_image(image_id)
        self.image_id = image_id
        self.stored_label = self._load_stored_label(image_id)
        return self.channels

    def _load_stored_label(self, image_id: str, tag: str = FINAL):
        """The datastore's `tag` label of the image as a segmentation (BraTS classes and colours), or None."""
        objects = self.logic._server().datastore()
        if tag not in objects.get(image_id, {}).get("labels", {}):
            return None
        path = self.logic._server().download_label(image_id, self.logic.workdir / f"{image_id}-{tag}.nii.gz", tag)
        try:
            entry = {"name": "label", "kind": "labelmap", "classes": {str(k): v for k, v in CLASSES.items() if k}}
            node = S.add_labelmap(self.scene, path, f"{tag} label", entry)
        finally:
            path.unlink(missing_ok=True)
        S.place(self.scene, node, S.folder(self.scene, image_id))
        return node

    def infer(self, model: str, outputs: list[str] | None = None, **options) -> S.Inference:
        """Run `model` on the open image; its bundle replaces the previous one in the views."""
        if self.image_id is None:
            raise ServerError("open an image first")
        run = self.logic.infer(model, self.image_id, outputs=outputs, **options)
        self._use(run, requested=outputs)
        return run

    def open_bundle(self, path) -> S.Inference:
        """A result bundle from a file (zip or folder), e.g. one saved earlier; it belongs to the open image."""
        if self.image_id is None:
            raise ServerError("open an image first")
        if not Path(path).exists():
            raise S.SceneError(f"no bundle at {path}")
        run = S.load_bundle(self.scene, path)  # under the folder of the bundle's image, like the Slicer module
        self._use(run)
        return run

    def _use(self, run: S.Inference, requested=None):
        if self.run is not None and self.run.folder != run.folder:
            for node in self.run.nodes.values():
                S.set_visible(node, False)
        self.run = run
        notes = [n for n in [S.format_note(run.manifest)] if n]
        have = set(run.nodes)
        for name in requested or []:
            if not any(h == name or h.startswith(name + "/") or h.startswith(name + ":") for h in have):
                notes.append(f"the bundle has no output {name!r} (the model did not write it)")
        if not any(n.IsA("vtkMRMLSegmentationNode") for n in run.nodes.values()):
            notes.append("the bundle has no label" + ("" if self.stored_label else ": nothing to edit or submit"))
        self.notes = notes
        for n in notes:
            log.warning("%s: %s", run.manifest.get("model", "?"), n)

    @property
    def manifest(self) -> dict:
        return self.run.manifest if self.run else {}

    def label_node(self):
        """The label shown and edited: the latest bundle's, else the datastore's final label of the image."""
        for node in (self.run.nodes.values() if self.run else []):
            if node.IsA("vtkMRMLSegmentationNode"):
                return node
        return self.stored_label

    def channel(self, name: str):
        """The channel volume of modality `name` (FLAIR, T1, T1ce, T2) or the first one."""
        for node, m in zip(self.channels, MODALITIES):
            if m == name:
                return node
        return self.channels[0] if self.channels else None

    def overlays(self) -> list[Overlay]:
        """Scalar outputs of the bundle (components, reconstruction, residual, attributions, microstructure maps)."""
        if self.run is None:
            return []
        out = []
        for name, node in self.run.nodes.items():
            if node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLVectorVolumeNode"):
                meta = _meta(node)
                out.append(Overlay(name, node, node.GetDescription() or meta.get("description", ""), meta))
        return out

    def tables(self) -> dict:
        """{output name: (header, rows)} of the bundle's tables (rows as strings as the CSV had them)."""
        out = {}
        for name, node in (self.run.nodes.items() if self.run else []):
            if node.IsA("vtkMRMLTableNode"):
                table = node.GetTable()
                header = [table.GetColumn(j).GetName() for j in range(table.GetNumberOfColumns())]
                rows = [[_cell(table.GetColumn(j), i) for j in range(len(header))] for i in range(table.GetNumberOfRows())]
                out[name] = (header, rows)
        return out

    def plots(self) -> dict:
        """{output name: PNG bytes} of the bundle's plots (written back from the picture node)."""
        from vtkmodules.vtkIOImage import vtkPNGWriter

        out = {}
        for name, node in (self.run.nodes.items() if self.run else []):
            if node.IsA("vtkMRMLVectorVolumeNode") and node.GetImageData() is not None:
                writer = vtkPNGWriter()
                writer.SetInputData(node.GetImageData())
                writer.WriteToMemoryOn()
                writer.Write()
                result = writer.GetResult()
                out[name] = bytes(memoryview(result)) if result is not None else b""
        return out

    def metrics(self) -> list[tuple[str, str, str]]:
        """(output, metric, value) of every measurement a bundle entry carries (faithfulness of attribution maps,
        reconstruction error, sparsity, the precision of microstructure maps, ...): the explanation-quality table.
        A verdict (faithful, sane, ...) reads yes / NO, and every flag of an entry's quality is a row of its own
        ("<key>.flag"), so a map that fails its check says so where it is shown."""
        rows = []
        for name, node in (self.run.nodes.items() if self.run else []):
            for key, value in sorted(_meta(node).items()):
                if key in _DISPLAY_KEYS:
                    continue
                if _number(value):
                    rows.append((name, key, f"{value:.4g}"))
                elif key in _WHAT_KEYS and isinstance(value, str):  # what a map explains: target, region
                    rows.append((name, key, value))
                elif isinstance(value, dict):
                    rows += [(name, f"{key}.{k}", f"{v:.4g}") for k, v in sorted(value.items()) if _number(v)]
                    # one level down: figures per region or modality (label_consistency.agreement.WT, ...)
                    rows += [(name, f"{key}.{k}.{kk}", f"{vv:.4g}") for k, v in sorted(value.items())
                             if isinstance(v, dict) for kk, vv in v.items() if _number(vv)]
                    rows += [(name, f"{key}.{k}", "yes" if v else "NO") for k, v in sorted(value.items())
                             if isinstance(v, bool)]
                    rows += [(name, f"{key}.flag", f) for f in value.get("flags") or [] if isinstance(f, str)]
        return rows

    # ------------------------------------------------------------------ probe
    def probe(self, ras) -> list[tuple[str, str, str]]:
        """(map, value, unit or meaning) of every channel, the label and every overlay at the RAS point `ras`."""
        rows = []
        for node, m in zip(self.channels, MODALITIES):
            rows.append((m, _fmt(_voxel_value(node, ras)), "image intensity"))
        seg = self.label_node()
        if seg is not None:
            rows.append(("label", _segment_at(seg, ras), "class"))
        for ov in self.overlays():
            rows.append((ov.name, _fmt(_voxel_value(ov.node, ras)), ov.unit or ov.description))
        return rows

    def label_centre(self):
        """RAS centre of the label's painted voxels (where the tumour is), None when the label is empty."""
        import numpy as np
        import vtk
        from vtk.util import numpy_support

        seg = self.label_node()
        if seg is None:
            return None
        segmentation = seg.GetSegmentation()
        name = segmentation.GetSourceRepresentationName()
        points = []
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            image = segment.GetRepresentation(name)
            if image is None or image.GetPointData().GetScalars() is None:
                continue
            ext = image.GetExtent()
            dims = [ext[1] - ext[0] + 1, ext[3] - ext[2] + 1, ext[5] - ext[4] + 1]
            if min(dims) <= 0:
                continue
            a = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
            kji = np.argwhere(a == segment.GetLabelValue())
            if len(kji):
                m = vtk.vtkMatrix4x4()
                image.GetImageToWorldMatrix(m)
                ijk = kji[:, ::-1] + np.array([ext[0], ext[2], ext[4]])
                M = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
                points.append(ijk @ M[:3, :3].T + M[:3, 3])
        if not points:
            return None
        return [float(c) for c in np.concatenate(points).mean(0)]

    def voxel(self, ras) -> tuple[int, int, int] | None:
        """IJK of the open image's voxel at `ras` (None outside)."""
        if not self.channels:
            return None
        return _ijk(self.channels[0], ras)

    # ------------------------------------------------------------------ annotation
    def submit(self, tag: str = FINAL) -> dict:
        seg = self.label_node()
        if seg is None or self.image_id is None:
            raise ServerError("nothing to submit: run a model (its label is what you edit and submit)")
        return self.logic.submit_label(seg, self.image_id, tag=tag)

    def next_sample(self, strategy: str) -> str | None:
        image_id, _ = self.logic.next_sample(strategy, load=False)
        return image_id

    def train(self, model: str, epochs: int = 1, **params) -> dict:
        return self.logic.train(model, epochs=int(epochs), **params)

    def training(self) -> TrainingState:
        return self.logic.training()

    def close(self):
        self._drop_image()
        self.logic.cleanup()


def _owned_nodes(node) -> list:
    """The nodes that exist only for `node`: its display nodes and, of a volume rendering display node, its
    volume property and cropping ROI (the views made them; they would stay in the scene without the volume)."""
    if not node.IsA("vtkMRMLDisplayableNode"):
        return []
    out = []
    for k in range(node.GetNumberOfDisplayNodes()):
        disp = node.GetNthDisplayNode(k)
        if disp is None:
            continue
        if disp.IsA("vtkMRMLVolumeRenderingDisplayNode"):
            roi = disp.GetROINode()
            out += [disp.GetVolumePropertyNode(), roi, roi.GetDisplayNode() if roi is not None else None]
        out.append(disp)
    return [n for n in out if n is not None]


def _cell(column, i: int) -> str:
    if column.IsA("vtkStringArray"):
        return str(column.GetValue(i))
    return f"{column.GetValue(i):.4g}"


def _fmt(v) -> str:
    return "outside" if v is None else f"{v:.4g}"


def _ijk(node, ras) -> tuple[int, int, int] | None:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetRASToIJKMatrix(m)
    p = m.MultiplyPoint((float(ras[0]), float(ras[1]), float(ras[2]), 1.0))
    ijk = tuple(int(round(c)) for c in p[:3])
    dims = node.GetImageData().GetDimensions()
    if any(c < 0 or c >= d for c, d in zip(ijk, dims)):
        return None
    return ijk  # type: ignore[return-value]


def _voxel_value(node, ras) -> float | None:
    ijk = _ijk(node, ras)
    if ijk is None:
        return None
    return node.GetImageData().GetScalarComponentAsDouble(*ijk, 0)


def _segment_at(seg_node, ras) -> str:
    """Name of the segment holding the point (the first painted one), 'background' or 'outside'."""
    import vtk

    segmentation = seg_node.GetSegmentation()
    name = segmentation.GetSourceRepresentationName()
    inside_any = False
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        image = segment.GetRepresentation(name)
        if image is None or not image.IsA("vtkOrientedImageData"):
            continue
        m = vtk.vtkMatrix4x4()
        image.GetWorldToImageMatrix(m)
        p = m.MultiplyPoint((float(ras[0]), float(ras[1]), float(ras[2]), 1.0))
        ijk = [int(round(c)) for c in p[:3]]
        ext = image.GetExtent()
        if any(c < ext[2 * a] or c > ext[2 * a + 1] for a, c in enumerate(ijk)):
            continue
        inside_any = True
        if image.GetScalarComponentAsDouble(*ijk, 0) == segment.GetLabelValue():
            return segment.GetName()
    return "background" if inside_any else "background (outside the painted extent)"
