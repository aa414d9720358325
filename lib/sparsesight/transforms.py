"""MONAI transform chains shared by training, inference and the benchmarks."""
from __future__ import annotations

from monai import transforms as mt


def intensity_normalisation(keys=("image",)):
    """Per-channel z-score over brain voxels (non-zero), the BraTS convention."""
    return mt.NormalizeIntensityd(keys=list(keys), nonzero=True, channel_wise=True)


def train_transforms(patch_size, samples_per_image: int = 2):
    """Load, normalise, sample patches centred on tumour (2:1 positive:negative), augment."""
    return mt.Compose([
        mt.LoadImaged(keys=["image", "label"], reader="NibabelReader", image_only=True),
        mt.EnsureChannelFirstd(keys=["image", "label"]),
        mt.EnsureTyped(keys=["image", "label"], dtype=None, track_meta=False),
        intensity_normalisation(),
        mt.SpatialPadd(keys=["image", "label"], spatial_size=patch_size),
        mt.RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=patch_size,
                                  pos=2, neg=1, num_samples=samples_per_image, image_key="image",
                                  image_threshold=0),
        mt.RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        mt.RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ])
