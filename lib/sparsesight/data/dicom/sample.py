"""The phantom dataset (MSD layout written by ``data.phantom.write_dataset``) as DICOM studies: one study per
case (patient id ``<prefix><case>``), four MR series each, written as Part 10 files and/or stored in a PACS
with STOW-RS (``sparsesight sample-data --dicom [--stow URL]``)."""
from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from .mr import StudyInfo, mr_study, write_series

logger = logging.getLogger(__name__)

PATIENT_PREFIX = "sparsesight-"


def case_images(dataset_dir) -> list[Path]:
    """The 4D case images of a dataset folder (imagesTr, then imagesTs), by name."""
    root = Path(dataset_dir)
    return [p for sub in ("imagesTr", "imagesTs") for p in sorted((root / sub).glob("case_*.nii.gz"))]


def case_study(image_path, seed: int = 0) -> tuple[StudyInfo, dict]:
    """(study info, {modality: series}) of one case image."""
    img = nib.load(str(image_path))
    case = Path(image_path).name.split(".")[0]
    info = StudyInfo(patient_id=PATIENT_PREFIX + case, patient_name=f"Phantom^{case}", seed=seed,
                     accession=case.replace("_", "")[:16])
    return info, mr_study(np.asarray(img.dataobj), img.affine, info)


def write_dicom_dataset(dataset_dir, out_dir=None, client=None, seed: int = 0) -> list[str]:
    """Every case as a DICOM study: files under <out_dir>/<case>/<modality>/ when out_dir is given, and stored
    with STOW-RS through ``client`` (a DICOMweb client, see web.connect) when given. Returns the StudyInstanceUIDs."""
    from . import web

    uids = []
    for path in case_images(dataset_dir):
        info, series = case_study(path, seed=seed)
        case = info.patient_id[len(PATIENT_PREFIX):]
        if out_dir is not None:
            for modality, datasets in series.items():
                write_series(datasets, Path(out_dir) / case / modality)
        if client is not None:  # the whole study in one STOW-RS request: all of it or none of it
            web.store(client, [ds for datasets in series.values() for ds in datasets])
        uids.append(str(series["FLAIR"][0].StudyInstanceUID))
        logger.info("%s: study %s (%s)", case, uids[-1], "stored" if client is not None else "written")
    return uids
