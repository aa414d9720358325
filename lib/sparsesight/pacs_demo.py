"""The demo against a PACS (``make demo PACS=1``, ``sparsesight pacs-demo``): a local Orthanc, phantom studies
stored in it as DICOM, the real MONAI Label server reading them over DICOMweb, a final label saved as an
annotator would (it becomes a DICOM SEG in the PACS), one short training from the PACS data, and the model's
label and probability maps stored back as a SEG and Parametric Maps, read back from Orthanc and checked.

Needs Debian's ``orthanc`` and ``orthanc-dicomweb`` (``apt-get install orthanc orthanc-dicomweb``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import requests

from .data.dicom import results, web
from .data.dicom.sample import write_dicom_dataset
from .data.dicom.series import series_to_volume
from .data.phantom import write_dataset
from .metrics import dice
from .orthanc import Orthanc
from .server import MonaiLabelServer

logger = logging.getLogger(__name__)

FAST_TRAIN = {"patch_size": [32, 32, 32], "samples_per_image": 1, "batch_size": 1}


def _train(url: str, epochs: int, timeout: float = 3600) -> None:
    r = requests.post(f"{url}/train/mlcsc", json={"epochs": epochs, "train_config": FAST_TRAIN}, timeout=120)
    if r.status_code != 200:
        raise RuntimeError(f"train request refused: {r.status_code} {r.text}")
    task, deadline = r.json()["id"], time.time() + timeout
    while time.time() < deadline:
        status = requests.get(f"{url}/train/", timeout=60).json()
        if status.get("id") == task and status["status"] not in ("SUBMITTED", "RUNNING"):
            if status["status"] != "DONE":
                raise RuntimeError("training failed:\n" + "\n".join(status.get("details", [])[-20:]))
            return
        time.sleep(2)
    raise RuntimeError(f"training did not finish in {timeout:.0f} s")


def run(out="out/pacs-demo", cases: int = 3, downsample: int = 4, epochs: int = 2, seed: int = 0,
        keep: bool = False) -> dict:
    """Run the PACS demo under ``out``; returns what it measured (stored objects, Dice of the SEG read back)."""
    out = Path(out)
    orthanc = Orthanc(out / "orthanc")
    orthanc.start()
    server = None
    try:
        print(f"Orthanc (DICOMweb) on {orthanc.dicomweb}", flush=True)
        phantom = out / "sample"
        write_dataset(phantom, n_cases=cases, seed=seed, downsample=downsample, n_test=0, progress=False)
        client = web.connect(orthanc.dicomweb)
        uids = write_dicom_dataset(phantom, client=client, seed=seed)
        print(f"stored {len(uids)} phantom studies (FLAIR, T1, T1ce, T2 as MR series) with STOW-RS", flush=True)

        server = MonaiLabelServer(orthanc.dicomweb, conf={"model_dir": out / "model", "pacs_cache": out / "cache",
                                                          "models": "mlcsc"}, log_path=out / "monailabel.log")
        url = server.start(timeout=300)
        print(f"MONAI Label server {url} on {orthanc.dicomweb}", flush=True)
        listed = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=120).json()["objects"]
        print(f"server lists {len(listed)} studies", flush=True)

        first = phantom / "labelsTr" / "case_000.nii.gz"
        r = requests.put(f"{url}/datastore/label", params={"image": uids[0], "tag": "final"},
                         files={"label": ("label.nii.gz", first.read_bytes())}, timeout=300)
        if r.status_code != 200:
            raise RuntimeError(f"saving the final label failed: {r.status_code} {r.text}")
        print("final label of case_000 saved: stored in Orthanc as a DICOM SEG", flush=True)

        t = time.time()
        _train(url, epochs)
        print(f"trained mlcsc for {epochs} epoch(s) on the PACS data in {time.time() - t:.0f} s", flush=True)

        target = uids[-1]
        r = requests.post(f"{url}/pacs/results/mlcsc", params={"image": target},
                          json={"outputs": ["label", "probabilities"]}, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"storing the results failed: {r.status_code} {r.text}")
        stored = r.json()["stored"]
        for o in stored:
            print(f"  stored {o['modality']:3s} {o['name']}  series {o['SeriesInstanceUID']}", flush=True)

        seg_info = next(o for o in stored if o["modality"] == "SEG")
        seg = web.retrieve_series(client, target, seg_info["SeriesInstanceUID"])[0]
        flair = next(s for s in web.search_series(client, {"StudyInstanceUID": target, "Modality": "MR"},
                                                  fields=["SeriesDescription"])
                     if str(s.get("SeriesDescription", "")) == "FLAIR")
        _, affine = series_to_volume(web.retrieve_series(client, target, str(flair.SeriesInstanceUID)))
        case = Path(sorted((phantom / "imagesTr").glob("case_*.nii.gz"))[-1]).name
        truth = np.asarray(nib.load(str(phantom / "labelsTr" / case)).dataobj)
        label = results.seg_to_label(seg, truth.shape, affine)
        wt = float(dice(label > 0, truth > 0))
        print(f"SEG read back from Orthanc on the FLAIR grid; whole-tumour Dice vs the phantom's truth: {wt:.3f}",
              flush=True)
        if keep:
            print("--keep: Orthanc and the server keep running; Ctrl-C stops both", flush=True)
            while True:
                time.sleep(3600)
        return {"studies": uids, "stored": stored, "dice_wt": wt}
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()
