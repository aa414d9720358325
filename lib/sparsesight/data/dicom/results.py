"""Results as DICOM objects a PACS viewer shows (highdicom): the label as a SEG, scalar maps as Parametric Maps.

Both reference the source series they were computed on (the reference channel of the study, whose grid the
model's input has): one frame per source slice, the same positions, orientation and spacing. Label values
are segment numbers (1 oedema, 2 non-enhancing core, 3 enhancing: ``sparsesight.CLASSES``), so a SEG read
back with ``seg_to_label`` equals the label voxel for voxel. Map values are stored as 16-bit integers with a
real-world value mapping (slope, intercept): read back, they are within slope/2 of the map.
"""
from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ... import CLASSES, __version__
from ...errors import InvalidInput
from .geometry import affine_from_slices

logger = logging.getLogger(__name__)

_AI = Code("AI", "DCM", "Artificial Intelligence")  # CID 7162
_CATEGORY = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
#: per label value: (segment label, SNOMED CT type code, meaning, CIELab-free RGB colour)
SEGMENTS = {
    1: ("oedema", "79654002", "Edema", (128, 174, 77)),
    2: ("non-enhancing core", "6574001", "Necrosis", (242, 214, 84)),
    3: ("enhancing", "108369006", "Neoplasm", (220, 61, 51)),
}
#: UCUM units of map outputs by the first part of their name (the rest is dimensionless)
UNITS = {"r": ("um", "micrometer"), "nu": ("1", "no units"), "f": ("1", "no units")}
_QUANT = 65535  # 16-bit unsigned pixels


def sorted_source(datasets) -> list[Dataset]:
    """The instances of a source series in slice order (k = 0, 1, ...), as series_to_volume stacks them."""
    datasets = list(datasets)
    _, order = affine_from_slices(datasets[0].ImageOrientationPatient, datasets[0].PixelSpacing,
                                  [ds.ImagePositionPatient for ds in datasets])
    return [datasets[i] for i in order]


def _frames(volume, n_slices: int) -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim != 3 or vol.shape[2] != n_slices:
        raise InvalidInput(f"volume of shape {vol.shape} does not fit the source series ({n_slices} slices)")
    return np.ascontiguousarray(np.transpose(vol, (2, 1, 0)))  # frame k = slice k transposed (geometry.py)


def _common(source, series_number: int, what: str) -> dict:
    return dict(series_instance_uid=generate_uid(), series_number=series_number, sop_instance_uid=generate_uid(),
                instance_number=1, manufacturer="SparseSight", manufacturer_model_name=what,
                software_versions=__version__, device_serial_number="0")


def label_to_seg(label, source, model: str = "", series_number: int = 900,
                 description: str = "SparseSight label") -> hd.seg.Segmentation:
    """A binary DICOM SEG of ``label`` (values 0..3 on the source series' grid), one segment per class 1..3."""
    source = sorted_source(source)
    frames = _frames(label, len(source)).astype(np.uint8)
    bad = np.setdiff1d(np.unique(frames), [0, *SEGMENTS])
    if bad.size:
        raise InvalidInput(f"label values {bad.tolist()} are not classes; allowed 0..{max(SEGMENTS)} ({CLASSES})")
    algorithm = hd.AlgorithmIdentificationSequence(name=f"SparseSight {model}".strip(), version=__version__,
                                                   family=_AI)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=value, segment_label=name, segmented_property_category=_CATEGORY,
            segmented_property_type=hd.sr.CodedConcept(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if model
            else hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            algorithm_identification=algorithm if model else None,
        )
        for value, (name, code, meaning, colour) in SEGMENTS.items()
    ]
    for d, (_, _, _, colour) in zip(descriptions, SEGMENTS.values()):
        d.RecommendedDisplayCIELabValue = _dicom_lab(colour)
    seg = hd.seg.Segmentation(
        source_images=source, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, content_description=description[:64],
        content_label="SPARSESIGHT_SEG", omit_empty_frames=False, **_common(source, series_number, "segmentation"))
    seg.SeriesDescription = description[:64]
    return seg


def _dicom_lab(rgb) -> list[int]:
    """RecommendedDisplayCIELabValue of an sRGB colour in 0..255: CIELab (D65) scaled to 0..65535."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    return [int(round(lab[0] / 100 * 65535)), *(int(round((v + 128) / 255 * 65535)) for v in lab[1:])]


def seg_to_label(seg: Dataset, shape, affine, tolerance_mm: float = 1e-3) -> np.ndarray:
    """The label volume (uint8, values = segment numbers) of a binary SEG on the grid (``shape``, RAS ``affine``).

    Every frame must lie on that grid: same orientation and pixel spacing, its position on a slice, to
    ``tolerance_mm``; otherwise InvalidInput saying how far off it is."""
    if not isinstance(seg, hd.seg.Segmentation):
        seg = hd.seg.Segmentation.from_dataset(seg)
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=np.float64)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    unit = lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)
    step = np.linalg.norm(lps[:3, :3], axis=0)
    if not np.allclose(iop, [*unit[:, 0], *unit[:, 1]], atol=1e-4):
        raise InvalidInput(f"SEG orientation {iop.tolist()} differs from the image's")
    if np.max(np.abs(spacing - [step[1], step[0]])) > tolerance_mm:
        raise InvalidInput(f"SEG pixel spacing {spacing.tolist()} differs from the image's {[step[1], step[0]]}")
    inv = np.linalg.inv(lps)
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    if tuple(pixels.shape[1:]) != (int(shape[1]), int(shape[0])):
        raise InvalidInput(f"SEG frames are {pixels.shape[1:]}, the image's slices {(shape[1], shape[0])}")
    label = np.zeros(tuple(int(s) for s in shape[:3]), dtype=np.uint8)
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        pos = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
        ijk = inv[:3, :3] @ pos + inv[:3, 3]
        k = int(round(float(ijk[2])))
        off = np.abs(lps[:3, :3] @ (ijk - [0, 0, k]))
        if np.max(off) > tolerance_mm or not 0 <= k < shape[2]:
            raise InvalidInput(f"SEG frame {f + 1} at {pos.tolist()} is not on a slice of the image "
                               f"({np.max(off):.4f} mm off)")
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        label[:, :, k][pixels[f].T > 0] = segment
    return label


def map_to_parametric_map(volume, source, name: str, series_number: int = 901,
                          description: str | None = None, unit=None) -> hd.pm.ParametricMap:
    """A Parametric Map of a scalar ``volume`` on the source grid: uint16 pixels, slope/intercept to real values."""
    source = sorted_source(source)
    vol = np.asarray(volume, dtype=np.float64)
    if not np.all(np.isfinite(vol)):
        raise InvalidInput(f"map {name!r} has non-finite values")
    lo, hi = float(vol.min()), float(vol.max())
    slope = (hi - lo) / _QUANT if hi > lo else 1.0
    frames = np.rint((_frames(vol, len(source)) - lo) / slope).astype(np.uint16)
    code, meaning = unit or UNITS.get(name.split("/")[0], ("1", "no units"))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=name[:16], lut_explanation=(description or name)[:64],
        unit=hd.sr.CodedConcept(code, "UCUM", meaning), value_range=(0, _QUANT), slope=slope, intercept=lo)
    pm = hd.pm.ParametricMap(
        source_images=source, pixel_array=frames, real_world_value_mappings=[mapping],
        window_center=_QUANT / 2, window_width=_QUANT, contains_recognizable_visual_features=False,
        content_description=(description or name)[:64],
        content_label="SPARSESIGHT_MAP", **_common(source, series_number, "parametric map"))
    pm.SeriesDescription = f"SparseSight {name}"[:64]
    pm.BodyPartExamined = getattr(source[0], "BodyPartExamined", "BRAIN")  # unpaired: no Laterality (dciodvfy)
    return pm


def parametric_map_values(pm: Dataset) -> tuple[np.ndarray, float]:
    """(real values as frames [frame, row, column], quantisation step) of a Parametric Map written here."""
    rwv = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope, intercept = float(rwv.RealWorldValueSlope), float(rwv.RealWorldValueIntercept)
    pixels = pm.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    return pixels.astype(np.float64) * slope + intercept, slope
