"""Segmentation inference shared by the segmentation runners (mlcsc, sum) and the benchmarks' baselines:
normalisation as in training, sliding-window prediction, the label and probability volumes of a bundle."""
from __future__ import annotations

import logging

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from .. import CLASSES, MODALITIES, input_noise
from ..bundle import BundleWriter
from ..data.io import load_image
from ..errors import InvalidInput
from ..transforms import clear_background, intensity_normalisation

logger = logging.getLogger(__name__)


def normalise(image: np.ndarray) -> torch.Tensor:
    """(C, X, Y, Z) array -> normalised (1, C, X, Y, Z) tensor, as in training."""
    # torch.tensor copies: MONAI normalises in place, and the caller's array must stay as it was
    out = intensity_normalisation()({"image": torch.tensor(image, dtype=torch.float32)})["image"]
    return torch.as_tensor(out).unsqueeze(0)


def _roi(model) -> list[int]:
    """The model's sliding-window size (smaller images are padded up to it by the inferer)."""
    cfg = getattr(model, "config", None)
    return list(cfg["roi_size"]) if isinstance(cfg, dict) and "roi_size" in cfg else [96, 96, 96]


@torch.no_grad()
def predict_logits(model, image: np.ndarray, device="cpu", roi_size=None, overlap: float = 0.25) -> torch.Tensor:
    """Sliding-window logits (1, K, X, Y, Z) of a normalised-on-the-fly (C, X, Y, Z) image."""
    device = torch.device(device)
    x = normalise(image).to(device)
    model = model.to(device).eval()
    inferer = SlidingWindowInferer(roi_size=roi_size or _roi(model), sw_batch_size=1,
                                   overlap=overlap, mode="gaussian", padding_mode="constant")
    return inferer(x, model).cpu()


def predict(model, image: np.ndarray, device="cpu", roi_size=None) -> np.ndarray:
    """(C, X, Y, Z) image -> label map (X, Y, Z) uint8 (argmax of the softmax)."""
    if image.ndim != 4:
        raise InvalidInput(f"expected a (C, X, Y, Z) image; got shape {image.shape}")
    return predict_logits(model, image, device, roi_size)[0].argmax(0).numpy().astype(np.uint8)


#: voxel sizes within this fraction of the training voxel size are used as they are
GRID_TOLERANCE = 0.1


def model_grid(model, affine: np.ndarray) -> np.ndarray | None:
    """The affine the image must be resampled to for `model` (RAS axes, its training voxel size), or None when
    the image is already on such a grid. Models without a recorded training voxel size (`spacing_mm`, set from
    the checkpoint's train metadata) take any grid."""
    spacing = getattr(model, "spacing_mm", None)
    if not spacing:
        return None
    import nibabel as nib

    zooms = nib.affines.voxel_sizes(affine)
    ras = nib.orientations.aff2axcodes(affine) == ("R", "A", "S")
    oblique = np.abs(affine[:3, :3] / zooms - np.diag(np.sign(np.diag(affine[:3, :3])))).max() > 1e-3
    if ras and not oblique and np.all(np.abs(zooms / np.asarray(spacing) - 1) <= GRID_TOLERANCE):
        return None
    return np.diag([*spacing, 1.0])


def model_grid_box(model, affine: np.ndarray, shape) -> tuple[tuple[int, ...], np.ndarray] | None:
    """(shape, affine) of the model's grid (model_grid) covering the field of view of an image of `shape` on
    `affine`, or None when the image is already on such a grid."""
    target = model_grid(model, affine)
    if target is None:
        return None
    shape = np.array(shape)
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = (affine @ corners.T)[:3]
    lo, hi = world.min(1), world.max(1)
    step = np.diag(target)[:3]
    target = target.copy()
    target[:3, 3] = lo
    return tuple(int(n) for n in np.ceil((hi - lo) / step).astype(int) + 1), target


def interpolation_noise_gain(affine: np.ndarray, shape, out_shape, target: np.ndarray, block: int = 48,
                             seed: int = 0) -> float:
    """How much of white noise's standard deviation the trilinear resampling of load_on_model_grid keeps: the std
    of unit white noise on the image's grid (`shape`, `affine`) resampled onto a block of `block`^3 voxels at the
    centre of the model's grid (`out_shape`, `target`), over the block's voxels inside the image. 1 when the grids
    coincide (a flip of axes), (2/3)^(3/2) = 0.54 on average for unaligned grids."""
    return chained_noise_gain([(shape, affine), (out_shape, target)], block, seed)


def chained_noise_gain(grids: list, block: int = 48, seed: int = 0) -> float:
    """The share of white noise's standard deviation kept through trilinear resamplings from grid to grid
    (`grids`: [(shape, affine), ...], the first the one the noise is white on): the std of unit white noise on
    the first grid after it was resampled onto each next grid in turn, over a block of `block`^3 voxels at the
    centre of the last grid (each grid before cut to what the next reads) inside the first grid's field of view.
    Two steps: a series resampled onto another's grid when a study is assembled (data.dicom.study.assemble),
    then onto the model's grid; 1.0 when too few voxels are inside."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    out_shape, target = grids[-1][0], np.asarray(grids[-1][1], dtype=float)
    start = [max(0, (n - block) // 2) for n in out_shape]
    size = tuple(min(block, n) for n in out_shape)
    sub = target.copy()
    sub[:3, 3] = target[:3, :3] @ np.array(start, dtype=float) + target[:3, 3]
    chain = [(size, sub)]
    for g in reversed(grids[:-1]):  # each grid cut to what the next one reads: no noise drawn where none is used
        chain.insert(0, _footprint(g, chain[0]))
    (shape, here) = chain[0]
    noise = np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)
    ones = np.ones(tuple(shape), np.float32)
    for grid in chain[1:]:
        noise = resample_from_to(nib.Nifti1Image(noise, here), grid, order=1).get_fdata(dtype=np.float32)
        ones = resample_from_to(nib.Nifti1Image(ones, here), grid, order=1).get_fdata(dtype=np.float32)
        here = grid[1]
    inside = ones > 0.999
    return float(noise[inside].std()) if inside.sum() > 100 else 1.0


def _footprint(grid, block, margin: int = 2):
    """The part of `grid` (shape, affine) that the trilinear resampling onto `block` (shape, affine) reads, with
    `margin` voxels more: (shape, affine) of that sub-grid."""
    shape, affine = tuple(int(n) for n in grid[0]), np.asarray(grid[1], dtype=float)
    bshape, baffine = block
    corners = np.array([[i, j, k, 1] for i in (0, bshape[0] - 1) for j in (0, bshape[1] - 1)
                        for k in (0, bshape[2] - 1)], dtype=float)
    ijk = (np.linalg.inv(affine) @ baffine @ corners.T)[:3]
    lo = np.clip(np.floor(ijk.min(1)).astype(int) - margin, 0, np.array(shape) - 1)
    hi = np.clip(np.ceil(ijk.max(1)).astype(int) + margin, 0, np.array(shape) - 1)
    sub = affine.copy()
    sub[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return tuple(int(n) for n in hi - lo + 1), sub


def load_on_model_grid(model, image_path, noise: bool = True,
                       series_grids: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """(image (C, X, Y, Z), affine, resampling) with the image on the model's grid (its near-zero background set to 0
    first: transforms.clear_background): an image of another voxel size,
    orientation or obliquity is resampled (trilinear) onto RAS axes at the training voxel size, covering the
    same field of view; `resampling` says from what (None when nothing was done): the voxel size and axes, the
    noise per channel estimated on the scan's own grid (input_noise.sigma_hat, and sigma_z) and the share of it
    the resampling keeps (interpolation_noise_gain), which input_noise.assess reports the noise from (not with
    `noise` False: training data, made in forked worker processes where torch, which sigma_hat uses, can hang).

    `series_grids`: {channel: data.dicom.study.series_grid} of channels that were themselves resampled onto the
    file's grid when a PACS study was assembled (the datastore's image info): their noise is taken from their own
    grid, kept through both resamplings (chained_noise_gain), and `resampling` gets a `series` entry with their
    voxel size and gain, even when the file itself is on the model's grid (then without `from_voxel_mm`)."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    image, affine = load_image(image_path, channels=getattr(model, "n", len(MODALITIES)))
    image, cleared = clear_background(image)
    if cleared:
        logger.info("%d voxels of a near-zero background set to 0 (transforms.clear_background)", cleared)
    grid = model_grid_box(model, affine, image.shape[1:])
    series = checked_series_grids(series_grids, image.shape[0]) if noise else {}
    if grid is None and not series:
        return image, affine, None
    info: dict = {}
    if grid is None:
        out_shape, target, resampled = tuple(image.shape[1:]), affine, image
    else:
        out_shape, target = grid
        resampled = np.stack([resample_from_to(nib.Nifti1Image(c, affine), (out_shape, target), order=1).get_fdata(
            dtype=np.float32) for c in image])
        info.update({"from_voxel_mm": [round(float(z), 3) for z in nib.affines.voxel_sizes(affine)],
                     "from_axes": "".join(nib.orientations.aff2axcodes(affine)),
                     "to_voxel_mm": [float(v) for v in np.diag(target)[:3]], "to_shape": list(out_shape)})
    if noise:
        sigma = input_noise.sigma_hat(image)  # on the scan's own grid, where its noise is white: input_noise
        with np.errstate(invalid="ignore", divide="ignore"):
            sigma_z = sigma / input_noise.brain_std(image)
        gain = 1.0 if grid is None else interpolation_noise_gain(affine, image.shape[1:], out_shape, target)
        for channel, g in series.items():  # resampled before the file was written: their own grid's figures
            c = MODALITIES.index(channel)
            sigma[c], sigma_z[c] = (np.nan if g[k] is None else g[k] for k in ("sigma", "sigma_z"))
            steps = [(g["shape"], np.asarray(g["affine"])), (image.shape[1:], affine)]
            if grid is not None:
                steps.append((out_shape, target))
            info.setdefault("series", {})[channel] = {"from_voxel_mm": g["voxel_mm"],
                                                      "noise_gain": round(chained_noise_gain(steps), 4)}
        info.update({"from_sigma": [input_noise.figure(v) for v in sigma],
                     "from_sigma_z": [input_noise.figure(v) for v in sigma_z], "noise_gain": round(gain, 4)})
        if grid is not None:  # read on the scan's own grid: the resampling correlates its noise (input_grid)
            from .. import input_grid

            info["from_apparent_factor"] = input_grid.apparent_factor(image, own_channels(info, image.shape[0]))
    logger.info("image resampled onto the model's grid: %s", info)
    return resampled, target, info


def own_channels(resampled: dict | None, n: int) -> list[int] | None:
    """The channels of an n-channel scan that are on their own grid: all but the series a PACS study resampled
    onto its grid before the file was written (resampled["series"]); None (all) when there are none, or none left."""
    series = (resampled or {}).get("series") or {}
    own = [c for c in range(n) if MODALITIES[c] not in series]
    return own if series and own else None


def regridded(resampled: dict | None) -> bool:
    """Whether load_on_model_grid resampled the file itself (not only reported its series' own grids)."""
    return bool(resampled) and "to_shape" in resampled  # type: ignore[operator]


#: the largest series grid a datastore's series_grids may name (its noise is simulated on it)
MAX_SERIES_VOXELS = 512**3


def checked_series_grids(grids, channels: int) -> dict:
    """The well-formed entries of a datastore's series_grids (data.dicom.study.series_grid) for the first
    `channels` modalities; one that is not (a channel, a 3D shape within MAX_SERIES_VOXELS, an invertible finite
    affine, finite voxel sizes and sigmas) is left out with a warning, so the checks fall back to the file's grid."""
    out: dict = {}
    for channel, g in (grids or {}).items() if isinstance(grids, dict) else ():
        try:
            shape = [int(n) for n in g["shape"]]
            a = np.asarray(g["affine"], dtype=float)
            sig = [None if g[k] is None else float(g[k]) for k in ("sigma", "sigma_z")]
            voxel = [float(v) for v in g["voxel_mm"]]
            ok = (channel in MODALITIES[:channels] and len(shape) == 3 and min(shape) > 0
                  and int(np.prod(shape)) <= MAX_SERIES_VOXELS and a.shape == (4, 4) and np.isfinite(a).all()
                  and abs(np.linalg.det(a[:3, :3])) > 1e-9 and len(voxel) == 3 and np.isfinite(voxel).all()
                  and all(v is None or (np.isfinite(v) and v >= 0) for v in sig))
        except (KeyError, TypeError, ValueError):
            ok = False
        if ok:
            out[channel] = {"shape": shape, "affine": a, "voxel_mm": voxel, "sigma": sig[0], "sigma_z": sig[1]}
        else:
            logger.warning("series_grids entry %r is malformed; its channel's noise is estimated on the file's grid",
                           channel)
    return out


def back_to_image_grid(label: np.ndarray, label_affine: np.ndarray, image_path) -> np.ndarray:
    """A label on the model's grid put back on the input image's grid (nearest neighbour)."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    ref = nib.load(str(image_path))
    grid = (ref.shape[:3], ref.affine)
    return np.asarray(resample_from_to(nib.Nifti1Image(label.astype(np.int16), label_affine), grid, order=0).dataobj,
                      dtype=np.uint8)


def predict_file(model, image_path, device="cpu", checks_for: tuple[str, str] | None = None,
                 series_grids: dict | None = None, **options):
    """Label map (X, Y, Z) uint8 and affine of the 4-channel image file `image_path` (the infer task's default);
    an attribution map instead when `options` ask for one (explain.served: attribution=..., attribution_nifti).
    An image on another grid than the model's is segmented on the model's grid and the label put back on the
    image's grid (an attribution map stays on the model's grid, with its affine).

    `checks_for` = (model name, version): a third item, the input checks a bundle's label carries (input_checks:
    noise and slice thickness against the tolerances measured for that version; None for an attribution map).
    `series_grids`: of a PACS study whose series were resampled onto one grid (load_on_model_grid)."""
    image, affine, resampled = load_on_model_grid(model, image_path, series_grids=series_grids)
    from ..explain.served import nifti_map
    amap = nifti_map(model.to(device), normalise(image).to(device), options, affine=affine)
    if amap is not None:
        return (amap, affine) if checks_for is None else (amap, affine, None)
    label = predict(model, image, device)
    checks = None if checks_for is None else input_checks(image, affine, *checks_for, resampled=resampled)
    if regridded(resampled):
        label, affine = back_to_image_grid(label, affine, image_path), load_image_affine(image_path)
    return (label, affine) if checks is None else (label, affine, checks)


def input_checks(image: np.ndarray | None, affine: np.ndarray | None, model: str, version: str,
                 resampled: dict | None = None) -> dict:
    """The input checks of a label and all their flags in one list (`flags`): with the `image` it was segmented
    from (C, X, Y, Z, on the model's grid; `resampled`: what load_on_model_grid did to the scan, if anything), its
    noise against the noise the model version was measured to hold up on (input_noise.assess: `input_noise`,
    flagged when above); with the image's `affine` (on the model's grid), the input's voxel size as it came in
    (input_voxel_mm, and the voxel sizes of the series a PACS study had resampled onto its grid), its slice
    thickness against the thickest slices measured to hold up (input_grid.assess: `input_grid`, flagged when
    above), and the slice thickness its noise says (input_grid.apparent_factor, read on the scan's own grid: on
    `image` when it was not resampled; over the channels on their own grid, own_channels) against the reading
    measured to hold up on upsampled (or smoothed) scans. What the plain label answer carries (its params' `checks`) and the bundle's label entry (add_label)."""
    from .. import input_grid

    out: dict = {}
    if image is not None:
        out["input_noise"] = input_noise.assess(image, model, version, MODALITIES[: image.shape[0]], resampled=resampled)
    if affine is not None:
        series = {c: g["from_voxel_mm"] for c, g in ((resampled or {}).get("series") or {}).items()}
        own = own_channels(resampled, len(MODALITIES) if image is None else image.shape[0])
        apparent = (resampled or {}).get("from_apparent_factor") if regridded(resampled) else (
            None if image is None else input_grid.apparent_factor(image, own))
        out["input_grid"] = input_grid.assess(input_voxel_mm(affine, resampled), model, version,
                                              series=series or None, apparent=apparent)
        g = out["input_grid"]
        if apparent is not None and own is not None:  # the series on their own grid, whose noise it read
            g["apparent_channels"] = [MODALITIES[c] for c in own]
        if "input_noise" in out and g.get("apparent_pattern") == "upsampled":
            out["input_noise"]["upsampled_note"] = (  # the finest band misses noise correlated by the upsampling
                f"the scan looks upsampled along voxel axis {g['apparent_axis']} (input_grid): its noise reads "
                f"lower than it is")
        elif "input_noise" in out and g.get("apparent_pattern") == "smoothed":
            out["input_noise"]["smoothed_note"] = (  # what a filter or denoiser left, not the scan's own noise
                "the scan looks smoothed or denoised in 3D (input_grid): its noise reads what the smoothing left")
    out["flags"] = [f for v in list(out.values()) for f in v["flags"]]
    return out


def load_image_affine(image_path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(image_path)).affine)


def input_voxel_mm(affine: np.ndarray, resampled: dict | None) -> list[float]:
    """The voxel size of the image as it came in: before the resampling `load_on_model_grid` reported, if any."""
    import nibabel as nib

    if resampled and "from_voxel_mm" in resampled:
        return list(resampled["from_voxel_mm"])
    return [float(v) for v in nib.affines.voxel_sizes(affine)]


def add_label(w: BundleWriter, label: np.ndarray, image: np.ndarray | None = None,
              mirrored: np.ndarray | None = None, consistency_note: str | None = None,
              resampled: dict | None = None) -> dict:
    """The label map (X, Y, Z) as the bundle's "label" labelmap with the tumour class names; the input checks
    (input_checks: `input_noise` with the `image` it was segmented from, `input_grid` from the bundle's affine,
    and `resampled`, what load_on_model_grid did to the scan);
    with the `mirrored` scan's label (mirror_label), how much the label agrees with it against the least agreement
    of a good segmentation measured for the model version (label_consistency.assess: `label_consistency`, flagged
    when below; `consistency_note` says why the measured thresholds do not apply)."""
    from .. import label_consistency

    model, version = w.manifest["model"], w.manifest["model_version"]
    meta = {k: v for k, v in input_checks(image, w.affine, model, version, resampled=resampled).items()
            if k != "flags"}
    if mirrored is not None:
        meta["label_consistency"] = label_consistency.assess(label_consistency.agreement(label, mirrored), model,
                                                             version, unmeasured=consistency_note)
    return w.add_volume("label", label, kind="labelmap", classes={k: v for k, v in CLASSES.items() if k}, **meta)


def mirror_label(model, x: torch.Tensor, affine: np.ndarray, **forward) -> np.ndarray:
    """The label of the normalised scan x (1, C, X, Y, Z) on the model's grid (`affine`) mirrored left-right and
    mirrored back (label_consistency.mirrored_label; one more whole-volume pass)."""
    from ..label_consistency import lr_axis, mirrored_label

    logger.info("label consistency: segmenting the scan mirrored left-right")
    return mirrored_label(model, x, lr_axis(affine), **forward)


def add_probabilities(w: BundleWriter, probabilities: np.ndarray, **meta) -> None:
    """One "probability/<class>" volume per tumour class from (K, X, Y, Z) scores in [0, 1]."""
    for c in range(1, len(CLASSES)):
        w.add_volume(f"probability/{CLASSES[c]}", probabilities[c], colormap="probability", range=[0.0, 1.0],
                     dtype=np.int16, **meta)
