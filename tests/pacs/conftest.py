"""A real Orthanc (DICOMweb) with phantom studies, and the real MONAI Label server reading it (issue 20).

Orthanc comes from Debian's packages `orthanc` and `orthanc-dicomweb`; when they are missing this conftest
installs them with apt-get (root only; a second run finds them and costs nothing). It is started as a child
process on a free 127.0.0.1 port with storage in a temporary folder (sparsesight.orthanc), never as a
system service, with a Lua filter that drops SEG objects of one marked patient (a PACS refusing a store).

Studies (4 mm phantoms, 60 x 60 x 39 voxels, stored with STOW-RS):
- case_000, case_001: complete (FLAIR, T1, T1ce, T2 on one grid);
- missing: case_000's anatomy without T2; missing_t1ce: without T1ce (only the scoring test touches it);
- other_grid: T2 at 2x the in-plane spacing, in another frame of reference;
- resampled: T2 at 2x the in-plane spacing, in the study's frame of reference;
- big: T2 at half the in-plane spacing (982,800 voxels in the study's four series);
- not_mr: T2 stored with modality OT;
- refuse_seg: complete, but the PACS drops every SEG for it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from sparsesight import orthanc
from sparsesight.data.dicom import web
from sparsesight.data.dicom.mr import StudyInfo, mr_series, mr_study
from sparsesight.data.dicom.sample import write_dicom_dataset
from sparsesight.data.phantom import write_dataset
from sparsesight.server import MonaiLabelServer

REFUSE_PATIENT = "sparsesight-refuse-seg"
LUA_REFUSE = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.Modality == 'SEG' and dicom.PatientID == '{REFUSE_PATIENT}' then
    return false
  end
  return true
end
"""


def pytest_configure(config):
    config.addinivalue_line("markers", "pacs: needs Orthanc (Debian orthanc + orthanc-dicomweb, installed if missing)")


def ensure_orthanc() -> None:
    """Install Debian's orthanc + orthanc-dicomweb (and dicom3tools' dciodvfy, the IOD validator) when missing
    (needs root and a package mirror)."""
    if orthanc.installed() and shutil.which("dciodvfy"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Orthanc is not installed and cannot be (apt-get install orthanc orthanc-dicomweb dicom3tools "
                    "as root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "orthanc", "orthanc-dicomweb", "dicom3tools"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    # the package's service is not used (policy-rc.d may already have stopped it from starting)
    assert orthanc.installed() and shutil.which("dciodvfy"), "apt-get reported success but a program is missing"


def dciodvfy_errors(ds, folder: Path) -> list[str]:
    """The 'Error' lines of dicom3tools' dciodvfy (DICOM IOD validator) for one dataset (warnings ignored)."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    path.write_bytes(web.to_bytes(ds))
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


@dataclass
class Pacs:
    process: orthanc.Orthanc
    phantom: Path  # MSD layout of the phantom cases
    studies: dict = field(default_factory=dict)  # name -> StudyInstanceUID

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def dicomweb(self) -> str:
        return self.process.dicomweb

    def client(self):
        return web.connect(self.dicomweb)

    def series(self, study_uid: str, modality: str | None = None) -> list:
        filters = {"StudyInstanceUID": study_uid, **({"Modality": modality} if modality else {})}
        return web.search_series(self.client(), filters)

    def counts(self) -> dict:
        stats = requests.get(f"{self.url}/statistics", timeout=30).json()
        return {k: stats[k] for k in ("CountStudies", "CountSeries", "CountInstances")}


def _case(phantom: Path, name: str):
    img = nib.load(str(phantom / "imagesTr" / f"{name}.nii.gz"))
    return np.asarray(img.dataobj), img.affine


def _store_bad_studies(client, phantom: Path) -> dict:
    image, affine = _case(phantom, "case_000")
    uids = {}

    info = StudyInfo(patient_id="sparsesight-missing-t2", seed=1)  # three of four series
    series = mr_study(image, affine, info)
    web.store(client, [ds for m in ("FLAIR", "T1", "T1ce") for ds in series[m]])
    uids["missing"] = info.uid("study")

    info = StudyInfo(patient_id="sparsesight-missing-t1ce", seed=7)  # (left for the scoring test to find)
    series = mr_study(image, affine, info)
    web.store(client, [ds for m in ("FLAIR", "T1", "T2") for ds in series[m]])
    uids["missing_t1ce"] = info.uid("study")

    info = StudyInfo(patient_id="sparsesight-other-grid", seed=2)  # T2 coarser and in another frame of reference
    series = mr_study(image, affine, info)
    web.store(client, [ds for m in ("FLAIR", "T1", "T1ce") for ds in series[m]])
    coarse = np.array(affine, dtype=float)
    coarse[:3, :2] *= 2
    t2 = mr_series(image[::2, ::2, :, 3], coarse, "T2", info, series_number=4)
    for ds in t2:
        ds.FrameOfReferenceUID = info.uid("another-frame")
    web.store(client, t2)
    uids["other_grid"] = info.uid("study")

    info = StudyInfo(patient_id="sparsesight-resampled", seed=5)  # T2 coarser, same frame of reference
    series = mr_study(image, affine, info)
    web.store(client, [ds for m in ("FLAIR", "T1", "T1ce") for ds in series[m]])
    web.store(client, mr_series(image[::2, ::2, :, 3], coarse, "T2", info, series_number=4))
    uids["resampled"] = info.uid("study")

    info = StudyInfo(patient_id="sparsesight-big", seed=6)  # T2 at twice the in-plane resolution: 4x the voxels
    series = mr_study(image, affine, info)
    web.store(client, [ds for m in ("FLAIR", "T1", "T1ce") for ds in series[m]])
    fine = np.array(affine, dtype=float)
    fine[:3, :2] /= 2
    web.store(client, mr_series(np.repeat(np.repeat(image[..., 3], 2, 0), 2, 1), fine, "T2", info, series_number=4))
    uids["big"] = info.uid("study")

    info = StudyInfo(patient_id="sparsesight-not-mr", seed=3)  # the "T2" series is not MR
    series = mr_study(image, affine, info)
    for ds in series["T2"]:
        ds.Modality = "OT"
    web.store(client, [ds for datasets in series.values() for ds in datasets])
    uids["not_mr"] = info.uid("study")

    info = StudyInfo(patient_id=REFUSE_PATIENT, seed=4)  # complete; the PACS drops its SEGs
    web.store(client, [ds for datasets in mr_study(image, affine, info).values() for ds in datasets])
    uids["refuse_seg"] = info.uid("study")
    return uids


@pytest.fixture(scope="session")
def pacs(tmp_path_factory) -> Pacs:
    ensure_orthanc()
    work = tmp_path_factory.mktemp("orthanc")
    lua = work / "refuse_seg.lua"
    lua.write_text(LUA_REFUSE)
    proc = orthanc.Orthanc(work / "storage", lua_scripts=[str(lua)])
    proc.start()
    try:
        phantom = work / "phantom"
        write_dataset(phantom, n_cases=2, seed=0, downsample=4, n_test=0, progress=False)
        client = web.connect(proc.dicomweb)
        uids = write_dicom_dataset(phantom, client=client)
        studies = {"case_000": uids[0], "case_001": uids[1], **_store_bad_studies(client, phantom)}
        yield Pacs(proc, phantom, studies)
    finally:
        proc.stop()


Rest = sys.modules["sparsesight_tests_server_conftest"].Rest  # get/post/put/delete/info/train (tests/conftest.py)


@dataclass
class Server(Rest):
    process: MonaiLabelServer
    cache: Path
    model_dir: Path

    def cache_files(self) -> dict:
        """{path under the cache: size}: the server's local state."""
        return {str(p.relative_to(self.cache)): p.stat().st_size for p in sorted(self.cache.rglob("*"))
                if p.is_file() and not p.name.endswith(".lock")}


def start_server(work: Path, dicomweb: str, name: str = "server", conf: dict | None = None) -> Server:
    cache, model_dir = work / "cache", work / "model"
    proc = MonaiLabelServer(dicomweb, conf={"model_dir": model_dir, "pacs_cache": cache, "models": "mlcsc",
                                            **(conf or {})}, log_path=work / f"{name}.log")
    url = proc.start(timeout=240)  # no MONAI_LABEL_DICOMWEB_SEARCH_FILTER: the app's default {"Modality": "MR"}
    return Server(url, proc, cache, model_dir)


@pytest.fixture(scope="session")
def dciodvfy(pacs):
    """dciodvfy(ds, folder) -> the validator's error lines (installed with Orthanc by the pacs fixture)."""
    return dciodvfy_errors


@pytest.fixture(scope="session")
def start_pacs_server():
    """start_server(work, dicomweb_url, name=...) for tests that need a server of their own."""
    return start_server


@pytest.fixture(scope="session")
def server(pacs, tmp_path_factory) -> Server:
    srv = start_server(tmp_path_factory.mktemp("monailabel-pacs"), pacs.dicomweb)
    try:
        yield srv
    finally:
        srv.process.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name in ("server", "pacs"):
            obj = getattr(item, "funcargs", {}).get(name)
            if obj is not None:
                report.sections.append((f"{name} log (tail)", obj.process.log(tail=5000)))
