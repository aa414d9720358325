"""SparseSight: medical-imaging models that are interpretable by construction.

The library holds all the science; `apps/sparsesight` (MONAI Label) serves it and
`slicer_extension/` shows it. Nothing here imports monailabel, slicer or Qt.
"""

__version__ = "0.1.0"

MODALITIES = ("FLAIR", "T1", "T1ce", "T2")
CLASSES = {0: "background", 1: "oedema", 2: "non-enhancing core", 3: "enhancing"}
# BraTS evaluation regions (docs/ARCHITECTURE.md, data conventions)
REGIONS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
