"""MONAI transform chains shared by training, inference and the benchmarks."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai import transforms as mt
from scipy import ndimage as ndi

#: `augment` levels of the training recipe (training/segmentation.py's train_config)
AUGMENT_LEVELS = ("light", "full", "thick")


def thick_slices(x: torch.Tensor, axis: int, thickness: float) -> torch.Tensor:
    """x (C, X, Y, Z) as if acquired with slices `thickness` voxels thick along spatial `axis` and resampled back
    to its grid, as the server resamples a thick-slice scan: the slice profile (a Gaussian of FWHM
    sqrt(thickness^2 - 1) voxels along the axis: a thick slice averages, it does not pick a plane), sampling every
    `thickness` voxels, then linear interpolation back (data/phantom/variety.regrid makes the off-grid phantoms
    the same way)."""
    n = x.shape[axis + 1]
    sigma = math.sqrt(max(thickness ** 2 - 1.0, 0.0)) / 2.355
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    k = (k / k.sum()).to(x)
    v = x.movedim(axis + 1, -1)                               # (C, a, b, n): the slice axis last
    shape = v.shape
    flat = v.reshape(-1, 1, n)
    blurred = F.conv1d(F.pad(flat, (radius, radius), mode="replicate"), k.view(1, 1, -1))
    m = max(2, int(math.floor((n - 1) / thickness)) + 1)      # the thick slices' centres
    sampled = F.interpolate(blurred, size=m, mode="linear", align_corners=True)
    back = F.interpolate(sampled, size=n, mode="linear", align_corners=True)
    return back.reshape(shape).movedim(-1, axis + 1).contiguous()


class RandThickSlicesd(mt.RandomizableTransform, mt.MapTransform):
    """With probability `prob`, the images of `keys` acquired with thick slices (thick_slices) along one spatial
    axis drawn at random, `thickness` voxels drawn from the range; labels are left on the fine grid (what the
    network should recover). MONAI's RandSimulateLowResolution coarsens every axis alike; a scan's slices are
    thicker along one."""

    def __init__(self, keys, prob: float = 0.25, thickness: tuple[float, float] = (1.5, 3.0)):
        mt.MapTransform.__init__(self, keys)
        mt.RandomizableTransform.__init__(self, prob)
        self.thickness = thickness
        self.axis, self.t = 0, 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.axis = int(self.R.randint(3))
        self.t = float(self.R.uniform(*self.thickness))

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = thick_slices(torch.as_tensor(d[key]), self.axis, self.t)
        return d


class RandRangeNoised(mt.RandomizableTransform, mt.MapTransform):
    """With probability `prob`, additive Gaussian noise of sigma = u x each channel's dynamic range inside the brain,
    u drawn from `fraction` (seed 003, App. E and G: 10 % of the range), on a z-scored image (background 0), then
    the brain re-scaled by 1 / sqrt(1 + s^2), s the noise sigma in z units: what z-scoring the noisy scan gives
    (zero-mean noise independent of the image adds s^2 to the brain's unit variance), so a patch looks as the
    served pipeline sees a noisy scan (noise added to the scan, then normalised). The range is the whole
    volume's, stored under `range_key` by ChannelRanged before the crop; the patch's own range without it."""

    def __init__(self, keys, prob: float = 0.3, fraction: tuple[float, float] = (0.0, 0.1),
                 range_key: str = "image_range"):
        mt.MapTransform.__init__(self, keys)
        mt.RandomizableTransform.__init__(self, prob)
        self.fraction, self.range_key = fraction, range_key
        self.u = 0.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.u = float(self.R.uniform(*self.fraction))

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if not self._do_transform or self.u <= 0:
            return d
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            brain = (x != 0).any(0)
            span = d.get(self.range_key)
            if span is None:
                span = brain_ranges(x)
            s = self.u * torch.as_tensor(span, dtype=x.dtype).reshape(-1)
            gen = torch.Generator().manual_seed(int(self.R.randint(2 ** 31)))
            n = torch.randn(x.shape, generator=gen, dtype=x.dtype) * s.view(-1, 1, 1, 1)
            d[key] = torch.where(brain, (x + n) / torch.sqrt(1 + s * s).view(-1, 1, 1, 1), x)
        return d


class ChannelRanged(mt.MapTransform):
    """Each channel's dynamic range (max - min) over the brain (non-zero voxels of any channel) of `keys`, stored
    under `<key>_range` for RandRangeNoised (computed once, before the crop, on the whole volume)."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}_range"] = brain_ranges(torch.as_tensor(d[key]))
        return d


def brain_ranges(x: torch.Tensor) -> torch.Tensor:
    """max - min of each channel of x (C, *S) over the brain (voxels non-zero in any channel); 0 without one."""
    brain = (x != 0).any(0)
    return torch.stack([c[brain].max() - c[brain].min() if brain.any() else c.new_zeros(()) for c in x])


#: a voxel whose every channel is within this share of the channel's 99th percentile of |x| may be background
BACKGROUND_SHARE = 0.05
#: such voxels are cleared only when they are at least this share of the non-zero voxels: a background that is not
#: zero. The partial-volume halo a resampled scan has at the brain's edge (3-6 % on the off-grid phantoms) stays, as
#: the shipped figures were measured with it.
NONZERO_BACKGROUND_MIN = 0.10


def clear_background(image: np.ndarray, share: float = BACKGROUND_SHARE) -> tuple[np.ndarray, int]:
    """(image, n): the scan (C, *S) with the n non-zero voxels of a near-zero background set to exactly 0.

    BraTS scans are 0 outside the brain, and the z-score (intensity_normalisation) and the input checks take the
    brain to be the non-zero voxels. A scan interpolated with splines before upload (whose ringing spreads small
    values over the whole background) or stored lossily has no exact zeros left: every background voxel counted
    as brain, the z-score was computed over the head's box, and SUM lost the whole tumour (WT 0.04 on held-out
    phantoms upsampled with cubic splines, bench/upsampled_slices). The background is the voxels where every
    channel is within `share` of that channel's 99th percentile of |x| (over its non-zero voxels) and that are
    connected to the volume's border through such voxels, cleared when they are NONZERO_BACKGROUND_MIN of the
    non-zero voxels or more: dark voxels inside the brain are never touched, and a scan whose background is exactly
    0 but for a halo at the brain's edge is returned as it is."""
    nonzero = image != 0
    brain = nonzero.any(0)  # the non-zero voxels of any channel, as the z-score and the checks take them
    if not brain.any():
        return image, 0
    levels = []
    for c, nz in zip(image, nonzero):
        v = np.abs(c[nz])[::max(1, int(nz.sum()) // 1_000_000)]  # a sample is enough for a percentile
        levels.append(share * float(np.percentile(v, 99)) if v.size else 0.0)
    near = np.all(np.abs(image) <= np.asarray(levels, dtype=image.dtype).reshape(-1, *[1] * (image.ndim - 1)),
                  axis=0)
    if not (near & brain).any():
        return image, 0
    parts, _ = ndi.label(near)
    border = np.unique(np.concatenate([np.take(parts, i, axis=a).ravel() for a in range(parts.ndim) for i in (0, -1)]))
    background = np.isin(parts, border[border > 0]) & brain
    n = int(background.sum())
    if n < NONZERO_BACKGROUND_MIN * np.count_nonzero(brain):
        return image, 0
    out = image.copy()
    out[:, background] = 0
    return out, n


def intensity_normalisation(keys=("image",)):
    """Per-channel z-score over brain voxels (non-zero), the BraTS convention."""
    return mt.NormalizeIntensityd(keys=list(keys), nonzero=True, channel_wise=True)


def light_augmentation() -> list:
    """Left-right flip and a small intensity scale and shift (what the shipped weights were trained with)."""
    return [
        mt.RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        mt.RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ]


def full_augmentation(patch_size, thick: bool = False) -> list:
    """nnU-Net-style augmentation of a patch, in its order: rotation / scaling (other head sizes and positions),
    elastic deformation (other anatomy), noise, blur, bias field (coil shading), gamma (other contrasts), a
    coarser grid simulated by down- and up-sampling (other voxel sizes), with `thick` slices 1.5-3 voxels thick
    along one random axis (RandThickSlicesd, p 0.25), flips on every axis. Labels follow every spatial step with
    nearest-neighbour sampling."""
    both, interp = ["image", "label"], ("bilinear", "nearest")
    rot = math.radians(15)
    return [
        mt.RandAffined(keys=both, prob=0.3, rotate_range=(rot, rot, rot), scale_range=(0.15, 0.15, 0.15),
                       mode=interp, padding_mode="zeros", spatial_size=patch_size),
        mt.Rand3DElasticd(keys=both, prob=0.1, sigma_range=(5, 8), magnitude_range=(50, 150), mode=interp,
                          padding_mode="zeros", spatial_size=patch_size),
        mt.RandGaussianNoised(keys="image", prob=0.15, std=0.1),
        mt.RandGaussianSmoothd(keys="image", prob=0.15, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        mt.RandBiasFieldd(keys="image", prob=0.2, coeff_range=(0.0, 0.3)),
        mt.RandAdjustContrastd(keys="image", prob=0.2, gamma=(0.7, 1.5), retain_stats=True),
        mt.RandScaleIntensityd(keys="image", factors=0.1, prob=0.3),
        mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.3),
        mt.RandSimulateLowResolutiond(keys="image", prob=0.15, zoom_range=(0.5, 1.0)),
        *([RandThickSlicesd(keys="image")] if thick else []),
        *[mt.RandFlipd(keys=both, prob=0.5, spatial_axis=axis) for axis in range(3)],
    ]


def train_transforms(patch_size, samples_per_image: int = 2, augment: str = "light",
                     range_noise: tuple[float, float] | None = None):
    """Load, normalise, sample patches centred on tumour (2:1 positive:negative), augment (`augment` of
    AUGMENT_LEVELS); with `range_noise` = (probability, largest fraction of the dynamic range), also the noise
    of seed 003's App. G (RandRangeNoised, fractions drawn uniformly up to the largest) after the other steps."""
    if augment not in AUGMENT_LEVELS:
        raise ValueError(f"unknown augment {augment!r}; choose from {list(AUGMENT_LEVELS)}")
    return mt.Compose([
        mt.LoadImaged(keys=["image", "label"], reader="NibabelReader", image_only=True),
        mt.EnsureChannelFirstd(keys=["image", "label"]),
        mt.EnsureTyped(keys=["image", "label"], dtype=None, track_meta=False),
        intensity_normalisation(),
        *([ChannelRanged(keys="image")] if range_noise else []),
        mt.SpatialPadd(keys=["image", "label"], spatial_size=patch_size),
        # tumour / brain voxel indices once per case (cached), not a full-volume scan per patch
        mt.FgBgToIndicesd(keys="label", image_key="image", image_threshold=0),
        mt.RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=patch_size,
                                  pos=2, neg=1, num_samples=samples_per_image, fg_indices_key="label_fg_indices",
                                  bg_indices_key="label_bg_indices"),
        # the crops are views of the cached volume: own them, so that training can share the cache without
        # copying each whole 1 mm case per draw (CacheDataset copy_cache=False; 0.11 s of 0.30 s per case)
        mt.Lambdad(keys=["image", "label"], func=torch.clone),
        *(full_augmentation(patch_size, thick=augment == "thick") if augment != "light" else light_augmentation()),
        *([RandRangeNoised(keys="image", prob=range_noise[0], fraction=(0.0, range_noise[1]))] if range_noise else []),
    ])
