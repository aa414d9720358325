"""A PACS (DICOMweb) as the datastore: one image per study, final labels as DICOM SEG in the PACS.

MONAI Label's DICOMWebDatastore serves one series as one image; our models need the four series of a
BraTS-style study (FLAIR, T1, T1ce, T2) as one 4-channel image. This datastore keeps MONAI Label's local
layout as a cache (a SparseSightDatastore, so every upload check and atomic write applies) and adds:

- image ids are StudyInstanceUIDs: `list_images` asks the PACS (QIDO-RS, the search filter, default
  {"Modality": "MR"}) for the studies that have matching series;
- a study is fetched (WADO-RS) when first used, its series mapped to channels by SeriesDescription
  (`--conf pacs_series_mapping`, sparsesight.data.dicom.study), stacked or resampled onto the reference
  series' grid and cached as a 4D NIfTI; a study that cannot be used (a channel missing or ambiguous, a non-MR
  series, series in other frames of reference, too many voxels) is answered 422 naming the series;
- a final label (PUT /datastore/label) is checked, written as a DICOM SEG on the reference series and stored
  (STOW-RS) before it is kept in the cache: a PACS that refuses it gives 502 and nothing changes locally;
- `datalist` (what training reads) first brings in final labels other tools stored: SEGs in the PACS on a
  listed study whose segments are not all AUTOMATIC (model outputs are not training labels);
- the PACS down or answering errors: 502 with the reason.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, List, Optional

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from filelock import FileLock
from monailabel.interfaces.datastore import DefaultLabelTag

from sparsesight.data import io as sio
from sparsesight.data.dicom import results, study, web
from sparsesight.data.dicom.series import series_to_volume
from sparsesight.errors import InvalidInput, SparseSightError, TooLarge

from .datastore import SparseSightDatastore
from .http_errors import NOT_FOUND, TOO_LARGE, UNPROCESSABLE, check_id, http_errors, refuse

logger = logging.getLogger(__name__)

BAD_GATEWAY = 502
DEFAULT_FILTER = {"Modality": "MR"}
STOCK_FILTER = {"Modality": "CT"}  # MONAI Label's default MONAI_LABEL_DICOMWEB_SEARCH_FILTER
LIST_TTL_SECONDS = 5.0  # a listing is asked of the PACS at most this often
FINAL_SEG_DESCRIPTION = "SparseSight final label"


@contextmanager
def pacs_errors():
    """http_errors() plus PacsError -> 502 with the PACS's reason."""
    try:
        with http_errors():
            yield
    except web.PacsError as e:
        raise refuse(BAD_GATEWAY, str(e)) from e


def _search_filter(conf_value, setting) -> dict:
    """--conf pacs_search_filter (JSON), else MONAI_LABEL_DICOMWEB_SEARCH_FILTER unless it is MONAI Label's stock
    {"Modality": "CT"} (start_server exports every setting, so "set" cannot be told from "default"; and a CT
    series is never one of our four MR channels), else {"Modality": "MR"}."""
    if conf_value:
        try:
            value = json.loads(conf_value) if isinstance(conf_value, str) else conf_value
        except ValueError as e:
            raise InvalidInput(f"--conf pacs_search_filter is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise InvalidInput('--conf pacs_search_filter must be a JSON object, e.g. {"Modality": "MR"}')
        return value
    if setting and dict(setting) != STOCK_FILTER:
        return dict(setting)
    return dict(DEFAULT_FILTER)


def settings_from(conf: dict) -> dict:
    """The PACS settings of the app's conf and MONAI Label's environment (credentials never in conf)."""
    from monailabel.config import settings

    search = _search_filter(conf.get("pacs_search_filter"), settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER)
    mapping = study.parse_mapping(conf.get("pacs_series_mapping") or os.environ.get("SPARSESIGHT_PACS_SERIES_MAPPING"))
    return {
        "search_filter": dict(search),
        "mapping": mapping,
        "resample": str(conf.get("pacs_resample", "true")).lower() not in ("0", "false", "no", "off"),
        "cache": conf.get("pacs_cache") or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or None,
        "username": settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME or None,
        "password": settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD or None,
        "timeout": float(conf.get("pacs_timeout", web.DEFAULT_TIMEOUT)),
    }


class PacsDatastore(SparseSightDatastore):
    def __init__(self, url: str, limits=None, search_filter=None, mapping=None, resample: bool = True,
                 cache=None, username=None, password=None, timeout: float = web.DEFAULT_TIMEOUT, **kwargs):
        self._url = url.rstrip("/")
        self._client = web.connect(self._url, username, password, timeout)
        self._filter = dict(search_filter or DEFAULT_FILTER)
        self._mapping = mapping or dict(study.DEFAULT_MAPPING)
        self._resample = resample
        self._max_voxels = limits.max_voxels if limits else None
        self._listing: tuple[float, dict[str, list[study.SeriesInfo]]] | None = None
        self._fetch_lock = threading.Lock()
        self._refused: dict[str, str] = {}  # study -> why it cannot be used (this process)
        digest = hashlib.sha256(self._url.encode()).hexdigest()[:16]
        root = os.path.join(cache or os.path.join(os.path.expanduser("~"), ".cache", "sparsesight", "pacs"), digest)
        os.makedirs(root, exist_ok=True)
        self._fetch_file_lock = os.path.join(root, ".pacs-fetch.lock")
        logger.info(f"PACS datastore {self._url} (filter {self._filter}); cache {root}")
        super().__init__(root, limits=limits, auto_reload=False, **kwargs)

    def name(self) -> str:
        return self._url

    # ------------------------------------------------------------------ listing
    def _studies(self, fresh: bool = False) -> dict[str, list[study.SeriesInfo]]:
        """{StudyInstanceUID: its series matching the search filter} (asked at most every LIST_TTL_SECONDS)."""
        now = time.monotonic()
        if not fresh and self._listing and now - self._listing[0] < LIST_TTL_SECONDS:
            return self._listing[1]
        found: dict[str, list[study.SeriesInfo]] = {}
        for ds in web.search_series(self._client, self._filter, fields=["SeriesDescription"]):
            uid = str(ds.get("StudyInstanceUID", ""))
            if uid:
                found.setdefault(uid, []).append(_series_info(ds))
        self._listing = (now, found)
        return found

    def list_images(self) -> List[str]:
        with pacs_errors():
            return sorted(self._studies())

    def status(self) -> Dict[str, Any]:
        """Counts for GET /info/ and GET /datastore/; a PACS that is down is reported here, not raised, so
        that the server answers (and starts) without it."""
        try:
            out = super().status()
            out["pacs"] = {"url": self._url, "reachable": True}
        except HTTPException as e:
            labelled = [k for k, v in self._datastore.objects.items() if v.labels.get(DefaultLabelTag.FINAL)]
            out = {"total": None, "completed": len(labelled), "label_tags": {},
                   "pacs": {"url": self._url, "reachable": False, "error": e.detail}}
        return out

    def json(self):
        """The cache's index plus every study of the PACS not fetched yet (GET /datastore/?output=all)."""
        out = super().json()
        objects = out.setdefault("objects", {})
        with pacs_errors():
            studies = self._studies()
        for uid, series in studies.items():
            info = {"source": "pacs", "fetched": False, "series": sorted(s.description for s in series)}
            if uid in self._refused:
                info["refused"] = self._refused[uid]
            objects.setdefault(uid, {"image": {"ext": "", "info": info}, "labels": {}})
        return out

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        listed = set(self.list_images())
        return [i for i in super().get_labeled_images(label_tag, labels) if i in listed]

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        """Studies without a final label, less those already refused (422/413): never suggested to annotate."""
        labelled = set(super().get_labeled_images(label_tag, labels))
        return [i for i in self.list_images() if i not in labelled and i not in self._refused]

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        """A study not fetched yet is described from the listing (no download); a refused one with its reason."""
        if image_id is not None and check_id(image_id) not in self._datastore.objects:
            with pacs_errors():
                studies = self._studies()
            if image_id in studies:
                info: Dict[str, Any] = {"source": "pacs", "fetched": False,
                                        "series": sorted(s.description for s in studies[image_id])}
                if image_id in self._refused:
                    info["refused"] = self._refused[image_id]
                return info
        return super().get_image_info(image_id)

    # ------------------------------------------------------------------ fetching a study
    def _object(self, image_id):
        check_id(image_id)
        if image_id not in self._datastore.objects:
            self._fetch(image_id)
        return super()._object(image_id)

    def get_image_uri(self, image_id: str) -> str:
        self._object(image_id)
        return super().get_image_uri(image_id)

    def _fetch(self, study_uid: str) -> None:
        """Bring one study into the cache as a 4-channel NIfTI (once; concurrent callers wait). A study refused
        as unusable (422) or too large (413) is remembered with its reason (listing, active learning)."""
        try:
            self._fetch_now(study_uid)
        except HTTPException as e:
            if e.status_code in (UNPROCESSABLE, TOO_LARGE):
                self._refused[study_uid] = str(e.detail)
            raise

    def _fetch_now(self, study_uid: str) -> None:
        with pacs_errors(), self._fetch_lock, FileLock(self._fetch_file_lock):
            self._init_from_datastore_file()  # another process may have fetched it meanwhile
            if study_uid in self._datastore.objects:
                return
            if study_uid not in self._studies() and study_uid not in self._studies(fresh=True):
                raise refuse(NOT_FOUND, f"study {study_uid!r} is not in the PACS {self._url} (or matches no series "
                                        f"of the search filter {self._filter}); GET /datastore/?output=all lists them")
            series = [_series_info(ds) for ds in web.search_series(
                self._client, {"StudyInstanceUID": study_uid}, fields=["SeriesDescription"])]
            chosen = study.assign_series(study_uid, series, self._mapping)
            volumes, frames, reference = {}, {}, None
            if self._max_voxels is not None:  # from the metadata, before any pixel is downloaded
                sizes = {c: web.series_voxels(self._client, study_uid, s.uid) for c, s in chosen.items()}
                if sum(sizes.values()) > self._max_voxels:
                    raise TooLarge(f"study {study_uid}: its four series hold {sum(sizes.values())} voxels "
                                   f"({', '.join(f'{c} {n}' for c, n in sizes.items())}; max_voxels "
                                   f"{self._max_voxels}); nothing was downloaded")
            for channel, info in chosen.items():
                instances = web.retrieve_series(self._client, study_uid, info.uid)
                if not instances:
                    raise InvalidInput(f"study {study_uid}: series {info.description!r} ({info.uid}) has no instances")
                volumes[channel] = series_to_volume(instances, self._max_voxels)
                frames[channel] = str(instances[0].get("FrameOfReferenceUID", ""))
                if channel == study.REFERENCE:
                    reference = instances[0]
            image, affine, grids = study.assemble(study_uid, volumes, frames, resample=self._resample)
            info: Dict[str, Any] = {
                "source": "pacs", "StudyInstanceUID": study_uid,
                "series": {c: s.uid for c, s in chosen.items()}, "reference_series": chosen[study.REFERENCE].uid,
                "PatientID": str(getattr(reference, "PatientID", "")),
                "StudyDate": str(getattr(reference, "StudyDate", "")),
            }
            if grids:  # series resampled onto the reference's grid: their own grid and noise, for the input checks
                info["series_grids"] = grids
            with tempfile.TemporaryDirectory(prefix="sparsesight-pacs-") as work:
                path = os.path.join(work, "image.nii.gz")
                sio.save_nifti(image, affine, path)
                self._add_image(study_uid, path, info)
            logger.info(f"fetched study {study_uid} from {self._url}: {image.shape}")

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        raise refuse(405, "this datastore is a PACS: store studies in the PACS (STOW-RS), not with "
                          "PUT /datastore/image")

    # ------------------------------------------------------------------ labels
    def _reference_source(self, image_id: str) -> list:
        info = self._datastore.objects[image_id].image.info
        return web.retrieve_series(self._client, image_id, info["reference_series"])

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        if label_tag != DefaultLabelTag.FINAL:
            return super().save_label(image_id, label_filename, label_tag, label_info)
        with pacs_errors():
            obj = self._object(image_id)
            header = nib.load(self._image_file(image_id, obj))
            with tempfile.TemporaryDirectory(prefix="sparsesight-upload-") as work:
                staged = self._stage(label_filename, work)
                label, affine = sio.load_label(staged, spatial_shape=tuple(header.shape[:3]), **self._limits)
                if not np.allclose(np.asarray(affine, float), header.affine, atol=1e-2):
                    raise refuse(UNPROCESSABLE, f"the label's affine differs from image {image_id!r}'s: save the "
                                                f"label on the image's grid")
                seg = results.label_to_seg(np.asarray(label), self._reference_source(image_id),
                                           description=FINAL_SEG_DESCRIPTION)
                web.store(self._client, [seg])  # 502 here leaves the cache as it was
                info = dict(label_info or {})
                info.update({"SeriesInstanceUID": str(seg.SeriesInstanceUID),
                             "SOPInstanceUID": str(seg.SOPInstanceUID), "pacs": self._url})
                result = super().save_label(image_id, staged, label_tag, info)
        logger.info(f"final label of {image_id} stored in {self._url} as SEG {seg.SeriesInstanceUID}")
        return result

    def _import_final_labels(self) -> None:
        """Final labels stored in the PACS by others (SEGs on listed studies, not AUTOMATIC) into the cache."""
        listed = set(self.list_images())
        done = set(super().get_labeled_images())
        with pacs_errors():
            segs = web.search_series(self._client, {"Modality": "SEG"})
        for ds in segs:
            study_uid = str(ds.get("StudyInstanceUID", ""))
            if study_uid not in listed or study_uid in done:
                continue
            try:
                with pacs_errors():
                    self._import_seg(study_uid, str(ds.SeriesInstanceUID))
                done.add(study_uid)
            except (HTTPException, SparseSightError) as e:  # one bad SEG never stops a training
                logger.warning(f"SEG {ds.get('SeriesInstanceUID')} of study {study_uid} skipped: "
                               f"{getattr(e, 'detail', e)}")

    def _import_seg(self, study_uid: str, series_uid: str) -> None:
        instances = web.retrieve_series(self._client, study_uid, series_uid)
        if len(instances) != 1:
            raise InvalidInput(f"a SEG series with {len(instances)} instances (one expected)")
        seg = instances[0]
        kinds = {str(getattr(s, "SegmentAlgorithmType", "")) for s in seg.SegmentSequence}
        if kinds == {"AUTOMATIC"}:
            return  # a model's output, not an annotator's label
        obj = self._object(study_uid)
        header = nib.load(self._image_file(study_uid, obj))
        label = results.seg_to_label(seg, header.shape[:3], header.affine)
        with tempfile.TemporaryDirectory(prefix="sparsesight-upload-") as work:
            path = os.path.join(work, "label.nii.gz")
            sio.save_nifti(label, header.affine, path)
            super().save_label(study_uid, path, DefaultLabelTag.FINAL,
                               {"SeriesInstanceUID": series_uid, "pacs": self._url, "imported": True})
        logger.info(f"imported final label of {study_uid} from SEG {series_uid}")

    def datalist(self, full_path=True) -> List[Dict[str, Any]]:
        self._import_final_labels()
        return super().datalist(full_path)


def _series_info(ds) -> study.SeriesInfo:
    return study.SeriesInfo(uid=str(ds.get("SeriesInstanceUID", "")), description=str(ds.get("SeriesDescription", "")),
                            modality=str(ds.get("Modality", "")))
