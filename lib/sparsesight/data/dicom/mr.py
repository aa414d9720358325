"""A 4-channel brain volume as a BraTS-style DICOM study: one MR Image Storage series per modality.

UIDs are derived from the patient id and case seed (``pydicom.uid.generate_uid`` with entropy sources), so
writing the same phantom twice gives the same objects and a second upload is a no-op in the PACS.
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from ... import MODALITIES, __version__
from ...errors import InvalidInput
from .geometry import slices_from_affine

logger = logging.getLogger(__name__)

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")

#: the SeriesDescription each channel is written with (the default series mapping reads them back)
SERIES_DESCRIPTIONS = {"FLAIR": "FLAIR", "T1": "T1", "T1ce": "T1ce", "T2": "T2"}

# plausible acquisition parameters per weighting (TR, TE, TI in ms; sequence), for viewers that show them
_ACQUISITION = {
    "FLAIR": dict(RepetitionTime=9000.0, EchoTime=120.0, InversionTime=2500.0, ScanningSequence=["SE", "IR"]),
    "T1": dict(RepetitionTime=600.0, EchoTime=10.0, ScanningSequence=["SE"]),
    "T1ce": dict(RepetitionTime=600.0, EchoTime=10.0, ScanningSequence=["SE"], ContrastBolusAgent="Gadolinium"),
    "T2": dict(RepetitionTime=4000.0, EchoTime=100.0, ScanningSequence=["SE"]),
}


@dataclass
class StudyInfo:
    """Patient and study attributes of a written study."""

    patient_id: str
    patient_name: str = "Phantom^SparseSight"
    study_description: str = "SparseSight phantom (BraTS-style MR)"
    accession: str = ""
    seed: int = 0
    date: datetime.date = field(default_factory=lambda: datetime.date(2024, 1, 1))

    def uid(self, *parts) -> str:
        return generate_uid(entropy_srcs=["sparsesight", self.patient_id, str(self.seed), *map(str, parts)])


def _base(info: StudyInfo, sop_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["sparsesight-implementation"])
    meta.ImplementationVersionName = f"SPARSESIGHT_{__version__}"[:16]
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, sop_uid
    ds.PatientName, ds.PatientID = info.patient_name, info.patient_id
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID = info.uid("study")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = info.date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", info.accession, ""
    ds.StudyDescription = info.study_description
    ds.Manufacturer, ds.ManufacturerModelName = "SparseSight", "phantom generator"
    ds.SoftwareVersions = __version__
    ds.FrameOfReferenceUID = info.uid("frame-of-reference")
    ds.PositionReferenceIndicator = ""
    return ds


def mr_series(volume, affine, modality: str, info: StudyInfo, series_number: int,
              description: str | None = None) -> list[FileDataset]:
    """One MR Image Storage series (one instance per slice, int16) of a 3D ``volume`` with RAS ``affine``."""
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise InvalidInput(f"an MR series is written from a 3D volume, got shape {vol.shape}")
    if np.issubdtype(vol.dtype, np.floating):
        vol = np.rint(vol)
    if vol.min() < -32768 or vol.max() > 32767:
        raise InvalidInput(f"{modality}: values outside int16 cannot be written as MR pixels")
    vol = vol.astype(np.int16)
    geo = slices_from_affine(affine, vol.shape[2])
    series_uid = info.uid("series", modality)
    acq = _ACQUISITION.get(modality, {})
    out = []
    for k in range(vol.shape[2]):
        ds = _base(info, info.uid("instance", modality, k))
        ds.Modality = "MR"
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
        ds.SeriesDescription = description or SERIES_DESCRIPTIONS.get(modality, modality)
        ds.ProtocolName = ds.SeriesDescription
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "PRIMARY", "OTHER"]
        ds.PatientPosition, ds.BodyPartExamined = "HFS", "BRAIN"
        ds.ScanningSequence = acq.get("ScanningSequence", ["SE"])
        ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "NONE", "", "3D"
        ds.RepetitionTime, ds.EchoTime = acq.get("RepetitionTime", 500.0), acq.get("EchoTime", 10.0)
        if "InversionTime" in acq:
            ds.InversionTime = acq["InversionTime"]
        if "ContrastBolusAgent" in acq:
            ds.ContrastBolusAgent = acq["ContrastBolusAgent"]
        ds.EchoTrainLength, ds.MagneticFieldStrength = 1, 3.0
        ds.ImagePositionPatient = list(geo.positions[k])
        ds.ImageOrientationPatient = list(geo.orientation)
        ds.PixelSpacing = list(geo.pixel_spacing)
        ds.SliceThickness = ds.SpacingBetweenSlices = geo.slice_thickness
        ds.SliceLocation = geo.positions[k][2]
        plane = np.ascontiguousarray(vol[:, :, k].T)  # rows along axis j, columns along axis i
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = plane.tobytes()
        out.append(ds)
    return out


def mr_study(image, affine, info: StudyInfo, modalities=MODALITIES,
             descriptions: dict | None = None) -> dict[str, list[FileDataset]]:
    """{modality: its series} of a channel-last 4D ``image`` (channels in ``modalities`` order)."""
    img = np.asarray(image)
    if img.ndim != 4 or img.shape[3] != len(modalities):
        raise InvalidInput(f"need a channel-last image with {len(modalities)} channels, got shape {img.shape}")
    names = {**SERIES_DESCRIPTIONS, **(descriptions or {})}
    return {m: mr_series(img[..., c], affine, m, info, series_number=c + 1, description=names.get(m, m))
            for c, m in enumerate(modalities)}


def write_series(datasets, folder) -> list[Path]:
    """Write a series as <folder>/<InstanceNumber>.dcm (DICOM Part 10 files); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(str(path), write_like_original=False)
        paths.append(path)
    return paths


def write_nifti_case_as_dicom(image_path, out_dir, patient_id: str, seed: int = 0) -> dict[str, list[Path]]:
    """A phantom case (4D NIfTI, channels FLAIR, T1, T1ce, T2) as four series under <out_dir>/<modality>/."""
    import nibabel as nib

    img = nib.load(str(image_path))
    series = mr_study(np.asarray(img.dataobj), img.affine, StudyInfo(patient_id=patient_id, seed=seed))
    paths = {m: write_series(ds, Path(out_dir) / m) for m, ds in series.items()}
    logger.info("wrote %s as DICOM (%d series) under %s", patient_id, len(paths), out_dir)
    return paths
