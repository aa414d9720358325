"""Phantom dataset on disk in the MSD Task01 layout (`write_dataset`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ... import CLASSES, MODALITIES
from .case import GENERATOR_VERSION, make_case


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` in a dataset made with ``seed`` (independent streams via SeedSequence)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _save(arr, affine, path, dtype):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(arr).astype(dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if dtype is np.int16:
        img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(path))


def starmap(fn, jobs: list[tuple], workers: int = 1):
    """fn(*job) for each job, results in the jobs' order: in `workers` processes when > 1, else in this one."""
    if workers > 1 and jobs:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            yield from pool.map(fn, *zip(*jobs))
    else:
        for job in jobs:
            yield fn(*job)


def _write_case(cs: int, downsample: int, variety: bool, image_path: Path, label_path: Path) -> None:
    """Make one case and write its image and label (a process pool's unit of work)."""
    case = make_case(cs, downsample, variety=variety)
    _save(case.image, case.affine, image_path, np.int16)
    _save(case.label, case.affine, label_path, np.uint8)


def write_dataset(out_dir, n_cases: int = 12, seed: int = 0, downsample: int = 1, n_test: int = 2,
                  progress: bool = True, variety: bool = False, workers: int = 1) -> Path:
    """Write ``n_cases`` phantoms in the MSD Task01 layout and return the path of dataset.json.

    imagesTr/case_NNN.nii.gz (4D int16, channel last: FLAIR, T1, T1ce, T2), labelsTr/case_NNN.nii.gz (uint8);
    the last ``n_test`` cases go to imagesTs/ + labelsTs/. Case i is make_case(case_seed(seed, i), downsample,
    variety=variety) (variety: off-grid cases, each on its own grid). `workers` > 1: cases made in that many
    processes (each case has its own seed, so the files are the same).
    """
    from tqdm import tqdm

    if n_cases < 1 or not (0 <= n_test <= n_cases):
        raise ValueError("need n_cases >= 1 and 0 <= n_test <= n_cases")
    out = Path(out_dir)
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):  # no stale cases from an earlier, larger run
        for f in (out / d).glob("case_[0-9][0-9][0-9].nii.gz"):
            f.unlink()
    n_train = n_cases - n_test
    training, test, seeds = [], [], []
    jobs = []
    for i in range(n_cases):
        seeds.append(case_seed(seed, i))
        split = "Tr" if i < n_train else "Ts"
        name = f"case_{i:03d}.nii.gz"
        jobs.append((seeds[-1], downsample, variety, out / f"images{split}" / name, out / f"labels{split}" / name))
        entry = {"image": f"./images{split}/{name}", "label": f"./labels{split}/{name}"}
        (training if split == "Tr" else test).append(entry)
    for _ in tqdm(starmap(_write_case, jobs, workers), total=n_cases, desc="phantom cases", disable=not progress,
                  unit="case"):
        pass
    meta = {
        "name": "SparseSightPhantom",
        "description": "BraTS-like brain tumour phantom (FLAIR, T1, T1ce, T2) on MNI152 anatomy, made by SparseSight",
        "reference": "MNI ICBM 2009a nonlinear symmetric template (via nilearn); SparseSight phantom generator",
        "licence": "synthetic; anatomy from the MNI ICBM152 2009a template, Copyright (C) 1993-2009 Louis Collins, "
                   "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University "
                   "(distributed with nilearn)",
        "release": GENERATOR_VERSION,
        "tensorImageSize": "4D",
        "modality": {str(i): m for i, m in enumerate(MODALITIES)},
        "labels": {str(i): n for i, n in CLASSES.items()},
        "numTraining": n_train,
        "numTest": n_test,
        "training": training,
        "test": test,
        "sparsesight": {"generator": "sparsesight.data.phantom", "version": GENERATOR_VERSION, "seed": int(seed),
                        "downsample": int(downsample), "spacing_mm": float(downsample) if not variety else "varied",
                        "variety": bool(variety), "case_seeds": seeds},
    }
    path = out / "dataset.json"
    path.write_text(json.dumps(meta, indent=2))
    return path
