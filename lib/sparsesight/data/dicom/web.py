"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) through dicomweb-client, with timeouts and one error type.

Every failure to reach the PACS, or a PACS answer that is an error, becomes a ``PacsError`` whose message
says which request failed and why; the app answers it with HTTP 502. A STOW-RS answer that lists failed
instances (FailedSOPSequence) is a failure too: the caller gets the reason the PACS gave.
"""
from __future__ import annotations

import logging
from io import BytesIO

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from ...errors import SparseSightError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0  # seconds per HTTP request to the PACS


class PacsError(SparseSightError):
    """The PACS could not be reached or refused a request (HTTP 502 in the app)."""


class _TimeoutSession(requests.Session):
    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def request(self, *args, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


def connect(url: str, username: str | None = None, password: str | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> DICOMwebClient:
    """A DICOMweb client of ``url`` (e.g. http://127.0.0.1:8042/dicom-web), HTTP basic auth when a user is given."""
    session = _TimeoutSession(timeout)
    if username:
        session.auth = (username, password or "")
    client = DICOMwebClient(url.rstrip("/"), session=session)
    client.set_http_retry_params(retry=False)
    return client


def _reason(e: Exception) -> str:
    if isinstance(e, requests.HTTPError) and e.response is not None:
        body = (e.response.text or "").strip().replace("\n", " ")[:300]
        return f"HTTP {e.response.status_code} {e.response.reason}" + (f": {body}" if body else "")
    if isinstance(e, requests.ConnectionError):
        return f"cannot connect ({type(e).__name__})"
    if isinstance(e, requests.Timeout):
        return "no answer in time"
    return f"{type(e).__name__}: {e}"


def call(what: str, base_url: str, func, *args, **kwargs):
    """func(*args, **kwargs) with every transport or HTTP error turned into a PacsError naming ``what``."""
    try:
        return func(*args, **kwargs)
    except PacsError:
        raise
    except (requests.RequestException, ValueError, KeyError) as e:
        raise PacsError(f"PACS {base_url}: {what} failed: {_reason(e)}") from None


def search_series(client: DICOMwebClient, filters: dict | None = None, fields=None) -> list[Dataset]:
    """QIDO-RS series search as datasets."""
    found = call("series search (QIDO-RS)", client.base_url, client.search_for_series,
                 search_filters=dict(filters or {}), fields=list(fields or []), get_remaining=True)
    return [Dataset.from_json(d) for d in found]


def series_voxels(client: DICOMwebClient, study_uid: str, series_uid: str) -> int:
    """Voxels of a series from its metadata (WADO-RS, no pixel data): what a retrieve would bring."""
    meta = call(f"metadata of series {series_uid} (WADO-RS)", client.base_url, client.retrieve_series_metadata,
                study_uid, series_uid)
    total = 0
    for item in meta:
        ds = Dataset.from_json(item)
        total += int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("NumberOfFrames", 1) or 1)
    return total


def retrieve_series(client: DICOMwebClient, study_uid: str, series_uid: str) -> list[Dataset]:
    """WADO-RS retrieve of every instance of one series."""
    found = list(call(f"retrieve of series {series_uid} (WADO-RS)", client.base_url, client.retrieve_series,
                      study_uid, series_uid))
    for ds in found:
        ds.filename = None  # read from memory: nothing for a copy to reopen
    return found


def store(client: DICOMwebClient, datasets, verify: bool = True) -> list[str]:
    """STOW-RS of ``datasets`` in one request, all or nothing; their SOPInstanceUIDs.

    A refusal (HTTP error, FailedSOPSequence) or, with ``verify``, an object the PACS acknowledged but does not
    list afterwards (Orthanc's ReceivedInstanceFilter drops objects silently) is a PacsError; the objects of
    this request that were kept are then removed again where the PACS allows it (``rollback``)."""
    datasets = list(datasets)
    if not datasets:
        return []
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    before = _present(client, datasets) if verify else set(uids)  # never roll back what was there already
    try:
        answer = call("store (STOW-RS)", client.base_url, client.store_instances, datasets)
        failed = answer.get("FailedSOPSequence") or []
        if failed:
            reasons = sorted({str(getattr(item, "FailureReason", "?")) for item in failed})
            raise PacsError(f"PACS {client.base_url} refused {len(failed)} of {len(datasets)} object(s) "
                            f"(STOW-RS FailureReason {', '.join(reasons)})")
        if verify:
            present = _present(client, datasets)
            missing = [ds for ds in datasets if str(ds.SOPInstanceUID) not in present]
            if missing:
                kinds = sorted({str(getattr(ds, "Modality", "?")) for ds in missing})
                raise PacsError(f"PACS {client.base_url} acknowledged but did not keep {len(missing)} of "
                                f"{len(datasets)} object(s) ({', '.join(kinds)}): it filtered them out")
    except PacsError as e:
        removed = rollback(client, [u for u in uids if u not in before])
        raise PacsError(f"{e}; {removed} object(s) of this request that it had kept were removed again") from None
    logger.info("stored %d object(s) in %s", len(datasets), client.base_url)
    return uids


def _present(client: DICOMwebClient, datasets) -> set[str]:
    """The SOPInstanceUIDs of ``datasets`` the PACS lists now (one QIDO-RS request per series)."""
    present: set[str] = set()
    for study_uid, series_uid in sorted({(str(d.StudyInstanceUID), str(d.SeriesInstanceUID)) for d in datasets}):
        found = call("instance search (QIDO-RS)", client.base_url, client.search_for_instances,
                     study_instance_uid=study_uid, series_instance_uid=series_uid, get_remaining=True)
        present.update(str(Dataset.from_json(f).get("SOPInstanceUID", "")) for f in found)
    return present


def rollback(client: DICOMwebClient, sop_uids) -> int:
    """Remove the given instances again (Orthanc's REST API beside its DICOMweb root); how many were removed.

    DICOMweb has no delete that PACSs agree on; for a PACS without Orthanc's API nothing is removed (0)."""
    base = client.base_url
    root = base[: -len("/dicom-web")] if base.endswith("/dicom-web") else None
    if root is None:
        return 0
    session = client._session  # the same auth and timeout
    removed = 0
    for uid in sop_uids:
        try:
            hits = session.post(f"{root}/tools/lookup", data=uid)
            if hits.status_code != 200:
                return removed
            for hit in hits.json():
                if hit.get("Type") == "Instance" and session.delete(f"{root}/instances/{hit['ID']}").ok:
                    removed += 1
        except (requests.RequestException, ValueError):
            return removed
    return removed


def to_bytes(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file."""
    with BytesIO() as b:
        pydicom.dcmwrite(b, ds, write_like_original=False)
        return b.getvalue()
