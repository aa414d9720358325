#!/usr/bin/env python
"""Make the BraTS-like 4-modality phantom dataset (MSD Task01 layout) used by the demo and the tests.

    python sample_data/make_sample_data.py                      # 12 cases at 1 mm (10 train + 2 test)
    python sample_data/make_sample_data.py --downsample 2 --cases 4
    python sample_data/make_sample_data.py --preview sample_data/phantom_preview.png   # + a PNG of case_000

Same as ``sparsesight sample-data``; the default output is sample_data/generated/Task01_SparseSightPhantom
next to this file. Deterministic: the same --seed gives byte-identical volumes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import sparsesight  # noqa: F401
except ImportError:  # not installed: use the checkout's lib/
    sys.path.insert(0, str(HERE.parent / "lib"))

from sparsesight.cli import add_sample_data_arguments, cmd_sample_data  # noqa: E402


def write_preview(dataset_json, png, entry: int = 0, dpi: int = 70) -> Path:
    """PNG of one written case: axial / coronal / sagittal slices through the tumour centre for FLAIR, T1,
    T1ce, T2 and the label over T1 (oedema green, non-enhancing core red, enhancing yellow)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from sparsesight import MODALITIES

    dataset_json = Path(dataset_json)
    meta = json.loads(dataset_json.read_text())
    item = (meta["training"] + meta["test"])[entry]
    img = np.asarray(nib.load(str(dataset_json.parent / item["image"])).dataobj, dtype=np.float32)
    lab = np.asarray(nib.load(str(dataset_json.parent / item["label"])).dataobj).astype(np.uint8)
    c = np.argwhere(lab > 0).mean(0).round().astype(int) if (lab > 0).any() else np.array(lab.shape) // 2
    views = [("axial", lambda a: a[:, :, c[2]].T), ("coronal", lambda a: a[:, c[1], :].T),
             ("sagittal", lambda a: a[c[0], :, :].T)]
    colours = [(0, 0, 0, 0), (0.1, 0.8, 0.1, 0.55), (0.9, 0.1, 0.1, 0.6), (1.0, 0.85, 0.0, 0.75)]
    fig, ax = plt.subplots(3, 5, figsize=(12.5, 8.2), facecolor="k")
    vmax = [float(np.percentile(img[..., m][img[..., m] > 0], 99.5)) for m in range(4)]
    for r, (name, cut) in enumerate(views):
        for m in range(4):
            ax[r, m].imshow(cut(img[..., m]), cmap="gray", origin="lower", vmin=0, vmax=vmax[m])
        ax[r, 4].imshow(cut(img[..., 1]), cmap="gray", origin="lower", vmin=0, vmax=vmax[1])
        ax[r, 4].imshow(cut(lab), cmap=ListedColormap(colours), origin="lower", vmin=0, vmax=3,
                        interpolation="nearest")
        ax[r, 0].text(-0.04, 0.5, name, color="w", rotation=90, va="center", ha="right",
                      transform=ax[r, 0].transAxes)
    for m, title in enumerate(list(MODALITIES) + ["label on T1"]):
        ax[0, m].set_title(title, color="w")
    for a in ax.ravel():
        a.axis("off")
    spacing = meta.get("sparsesight", {}).get("spacing_mm", "?")
    fig.suptitle(f"SparseSight phantom {Path(item['image']).name.split('.')[0]} ({spacing} mm, "
                 f"{img.shape[0]}x{img.shape[1]}x{img.shape[2]}) on MNI152 anatomy", color="w")
    fig.legend(handles=[Patch(color=colours[i][:3], label=n) for i, n in
                        ((1, "oedema"), (2, "non-enhancing core"), (3, "enhancing"))],
               loc="lower center", ncol=3, frameon=False, labelcolor="w")
    fig.tight_layout(rect=(0.01, 0.04, 1, 0.96))
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=dpi, facecolor="k")
    plt.close(fig)
    return png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sample_data_arguments(p, default_out=HERE / "generated" / "Task01_SparseSightPhantom")
    p.add_argument("--preview", type=Path, default=None, help="also write a PNG of the first case here")
    args = p.parse_args(argv)
    rc = cmd_sample_data(args)
    if rc == 0 and args.preview is not None:
        print(f"preview: {write_preview(args.out / 'dataset.json', args.preview).resolve()}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
