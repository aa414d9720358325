"""Convolutional dictionaries for CDL-Lambda (seed 001, Section 2.5), learned with SPORCO and stored small.

Each dictionary is learned by SPORCO's convolutional BPDN dictionary learning (sporco.dictlrn.cbpdndl,
Wohlberg 2017/Garcia-Cardona & Wohlberg 2018) on the high-pass component (problem PH: Tikhonov low-pass with
parameter beta, sporco.signal.tikhonov_filter) of clean axial T2 slices of phantom cases that are never used for
testing. Files: dictionaries/<name>.npz with `filters` (K, kh, kw) float32 unit-norm and the settings
(beta, lmbda, iterations, seeds). Regenerate them with

    python -m sparsesight.data.convdict [--iterations 60] [--names K16_k7 K32_k9 ...]
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import InvalidInput
from ..preview import pyplot, save_png

FOLDER = Path(__file__).with_name("dictionaries")
#: the stored set: (filters K, kernel size k); names K{K}_k{k}
SIZES = ((8, 7), (16, 7), (16, 9), (24, 9), (32, 9))
BETA = 5.0  # Tikhonov low-pass parameter of (PH), as in SPORCO's CDL examples
LMBDA = 0.1  # scalar sparsity level used to learn the dictionaries
TRAIN_SEEDS = (9001, 9002, 9003)  # phantom cases of the dictionary training slices (disjoint from test seeds)
_NAME = re.compile(r"^K(\d+)_k(\d+)$")


def name_of(k: int, ksize: int) -> str:
    return f"K{k}_k{ksize}"


def available() -> list[str]:
    """Names of the stored dictionaries, smallest first."""
    names = [p.stem for p in FOLDER.glob("*.npz") if _NAME.match(p.stem)]
    return sorted(names, key=lambda n: tuple(int(g) for g in _NAME.match(n).groups()))


def load(name: str) -> np.ndarray:
    """The filters (K, kh, kw) float32 of stored dictionary `name` (e.g. 'K32_k9')."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(f"dictionary name must look like K32_k9; got {name!r}; stored: {available()}")
    path = FOLDER / f"{name}.npz"
    if not path.is_file():
        raise InvalidInput(f"no stored dictionary {name!r}; stored: {available()} "
                           f"(python -m sparsesight.data.convdict makes them)")
    with np.load(path) as z:
        return np.asarray(z["filters"], dtype=np.float32)


def info(name: str) -> dict:
    with np.load(FOLDER / f"{name}.npz") as z:
        return {k: z[k].tolist() for k in z.files if k != "filters"}


def training_images(seeds=TRAIN_SEEDS, downsample: int = 2, every: int = 10, crop: int = 96) -> np.ndarray:
    """High-pass components (H, W, N) of the dictionary training slices (PH with beta = BETA), central crop x crop."""
    from sporco.signal import tikhonov_filter

    from .lfmri import reference_slices

    refs = reference_slices(seeds, downsample=downsample, channel="T2", every=every)
    s = np.moveaxis(refs, 0, -1).astype(np.float64)
    hp = tikhonov_filter(s, BETA)[1]
    r0, c0 = (hp.shape[0] - crop) // 2, (hp.shape[1] - crop) // 2
    return np.ascontiguousarray(hp[r0:r0 + crop, c0:c0 + crop])


def learn(images: np.ndarray, k: int, ksize: int, iterations: int = 60, lmbda: float = LMBDA,
          seed: int = 0) -> np.ndarray:
    """SPORCO ConvBPDNDictLearn of K filters ksize x ksize on images (H, W, N); returns (K, ksize, ksize)."""
    from sporco.dictlrn import cbpdndl

    rng = np.random.default_rng(seed)
    d0 = rng.standard_normal((ksize, ksize, k))
    opt = cbpdndl.ConvBPDNDictLearn.Options({"Verbose": False, "MaxMainIter": iterations,
                                              "CBPDN": {"rho": 50.0 * lmbda + 0.5},
                                              "CCMOD": {"rho": 10.0, "ZeroMean": True}},
                                             xmethod="admm", dmethod="cns")
    solver = cbpdndl.ConvBPDNDictLearn(d0, images, lmbda, opt, xmethod="admm", dmethod="cns")
    d = np.asarray(solver.solve()).reshape(ksize, ksize, k)
    d = np.moveaxis(d, -1, 0)
    d /= np.maximum(np.linalg.norm(d.reshape(k, -1), axis=1), 1e-12)[:, None, None]
    return d.astype(np.float32)


def plot(names, path) -> Path:
    """One panel per dictionary: its filters tiled (red positive, blue negative)."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.9))
    for ax, name in zip(np.atleast_1d(axes), names):
        d = load(name)
        k, ks = d.shape[0], d.shape[1]
        cols = int(np.ceil(np.sqrt(k)))
        tile = np.full((int(np.ceil(k / cols)) * (ks + 1), cols * (ks + 1)), np.nan)
        for i in range(k):
            r, c = divmod(i, cols)
            tile[r * (ks + 1):r * (ks + 1) + ks, c * (ks + 1):c * (ks + 1) + ks] = d[i] / np.abs(d[i]).max()
        ax.imshow(tile, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"{name}: {k} filters {ks}x{ks}", fontsize=8)
        ax.axis("off")
    save_png(fig, path)
    return Path(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparsesight.data.convdict",
                                description="Learn the stored CDL-Lambda dictionaries with SPORCO.")
    p.add_argument("--names", nargs="*", default=[name_of(k, s) for k, s in SIZES],
                   help="dictionaries to learn, K<filters>_k<kernel size> (default: the stored set)")
    p.add_argument("--iterations", type=int, default=60, help="dictionary learning iterations (default 60)")
    p.add_argument("--out", type=Path, default=FOLDER)
    args = p.parse_args(argv)
    images = training_images()
    print(f"dictionary training images: {images.shape[-1]} high-pass slices of {images.shape[:2]}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(args.names):
        m = _NAME.match(name)
        if not m:
            print(f"error: bad dictionary name {name!r} (K<filters>_k<odd kernel size>)", file=sys.stderr)
            return 2
        k, ksize = (int(g) for g in m.groups())
        t0 = time.time()
        d = learn(images, k, ksize, args.iterations, seed=i)
        np.savez_compressed(args.out / f"{name}.npz", filters=d, beta=BETA, lmbda=LMBDA,
                            iterations=args.iterations, seeds=np.array(TRAIN_SEEDS), images=images.shape[-1])
        print(f"[{i + 1}/{len(args.names)}] {name}: {time.time() - t0:.1f} s -> {args.out / (name + '.npz')}",
              flush=True)
    if args.out == FOLDER:
        print(f"overview: {plot(available(), FOLDER / 'dictionaries.png')}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
