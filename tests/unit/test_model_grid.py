"""Images on another grid than the model's (voxel size, orientation) are resampled to the model's grid, and the
label comes back on the image's grid (issue 17, bad input: never segmented silently on a grid the model never saw)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from sparsesight.metrics import dice
from sparsesight.runners.segmentation import load_on_model_grid, model_grid, predict_file


class ScaleDetector(torch.nn.Module):
    """Class 1 where channel 0 is bright in runs of at least 15 voxels along x: a "1 mm model" of a 24 mm blob,
    which a 2 mm image shows 12 voxels wide, so it is missed there unless the image is resampled."""

    n = 4
    config = {"roi_size": [32, 32, 32]}

    def forward(self, x):
        bright = (x[:, :1] > 1.0).float()
        pool = lambda t: torch.nn.functional.max_pool3d(t, (15, 1, 1), stride=1, padding=(7, 0, 0))  # noqa: E731
        wide = pool(-pool(-bright))  # opening along x: runs shorter than 15 voxels vanish
        return torch.cat([1 - wide, wide, 0 * wide, 0 * wide], 1) * 10


def sphere_image(path, zoom: float, flip: bool):
    """A 64 mm cube with a 12 mm radius sphere in channel 0, at `zoom` mm, RAS or LPS (x and y flipped)."""
    n = int(64 / zoom)
    c = (np.arange(n) + 0.5) * zoom - 32
    X, Y, Z = np.meshgrid(c, c, c, indexing="ij")
    sphere = (X**2 + Y**2 + Z**2 < 12**2)
    img = np.random.default_rng(0).normal(0.0, 0.05, (n, n, n, 4)).astype(np.float32) + 1.0
    img[..., 0] += 4.0 * sphere
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = -32 + zoom / 2
    if flip:
        img, sphere = img[::-1, ::-1], sphere[::-1, ::-1]
        affine = np.diag([-zoom, -zoom, zoom, 1.0])
        affine[:3, 3] = [32 - zoom / 2, 32 - zoom / 2, -32 + zoom / 2]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(img), affine), str(path))
    return sphere, affine


def test_other_grids_are_resampled_and_the_label_comes_back_on_the_image_grid(tmp_path):
    model = ScaleDetector().eval()
    path = tmp_path / "lps_2mm.nii.gz"
    truth, affine = sphere_image(path, zoom=2.0, flip=True)
    # a model without a recorded training grid takes the image as it is: the 2 mm sphere looks too small
    plain, _ = predict_file(model, path)
    assert plain.shape == truth.shape
    model.spacing_mm = (1.0, 1.0, 1.0)
    assert model_grid(model, affine) is not None
    image, grid_affine, info = load_on_model_grid(model, path)
    assert info["from_voxel_mm"] == [2.0, 2.0, 2.0] and info["from_axes"] == "LPS" and info["to_voxel_mm"] == [1, 1, 1]
    assert nib.orientations.aff2axcodes(grid_affine) == ("R", "A", "S") and image.shape[1:] == (63, 63, 63)  # voxel centres 62 mm apart
    label, out_affine = predict_file(model, path)
    assert label.shape == truth.shape and np.allclose(out_affine, affine)
    assert dice(label > 0, truth) > 0.85 and dice(plain > 0, truth) < 0.2
    # on its own grid nothing is resampled
    same = tmp_path / "ras_1mm.nii.gz"
    _, affine1 = sphere_image(same, zoom=1.0, flip=False)
    assert model_grid(model, affine1) is None and load_on_model_grid(model, same)[2] is None
