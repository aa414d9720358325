"""Result bundle -> MRML nodes (no Qt: runs in Slicer and on slicer-core alike), one module per output kind.

Every output of a bundle (docs/ARCHITECTURE.md, "Result bundle") becomes the node Slicer shows it with, chosen only by the
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

from .bundle import (
                   FORMAT,
                   Inference,
                   format_note,
                   inference_folder_name,
                   inferences,
                   load_bundle,
                   node_name,
                   outputs,
                   set_visible,
)
from .labelmap import (
                   PALETTE,
                   add_labelmap,
                   class_colors,
                   export_label,
                   regrid,
                   write_label,
)
from .mrml import (
                   ATTR,
                   MANIFEST,
                   SceneError,
                   array_from_volume,
                   children,
                   folder,
                   ijk_to_ras,
                   load_mrb,
                   new_scene,
                   place,
                   read_volume,
                   save_mrb,
                   subject_hierarchy,
)
from .plot import add_plot
from .scalar import (
                   COLORMAPS,
                   GREY,
                   ROBUST,
                   add_scalar,
                   color_node,
                   display_for,
                   read_image,
                   write_image,
)
from .table import add_table

__all__ = ["ATTR", "COLORMAPS", "FORMAT", "GREY", "MANIFEST", "format_note", "PALETTE", "ROBUST", "Inference", "SceneError", "add_labelmap",
           "add_plot", "add_scalar", "add_table", "array_from_volume", "children", "class_colors", "color_node",
           "display_for", "export_label", "folder", "ijk_to_ras", "inference_folder_name", "inferences",
           "load_bundle", "load_mrb", "new_scene", "node_name", "outputs", "place", "read_image", "read_volume",
           "regrid", "save_mrb", "set_visible", "subject_hierarchy", "write_image", "write_label"]
