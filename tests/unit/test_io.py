"""Input checks: every unusable image or label is a named InvalidInput with a reason."""
import numpy as np
import pytest

from sparsesight.data.io import load_image, load_label, save_nifti
from sparsesight.errors import InvalidInput


def _img(tmp_path, arr, name="img.nii.gz"):
    return save_nifti(arr, np.diag([1.0, 1.0, 1.0, 1.0]), tmp_path / name)


def test_image_round_trip_channel_first(tmp_path):
    arr = np.random.default_rng(0).normal(size=(10, 9, 8, 4)).astype(np.float32)
    x, aff = load_image(_img(tmp_path, arr))
    assert x.shape == (4, 10, 9, 8) and np.allclose(x[2], arr[..., 2]) and aff.shape == (4, 4)


@pytest.mark.parametrize("arr, match", [
    (np.zeros((10, 9, 8), np.float32), "must be 4D"),
    (np.zeros((10, 9, 8, 3), np.float32), "3 channels; expected 4"),
    (np.full((10, 9, 8, 4), np.nan, np.float32), "NaN/Inf"),
])
def test_bad_images(tmp_path, arr, match):
    with pytest.raises(InvalidInput, match=match):
        load_image(_img(tmp_path, arr))


def test_not_an_image_and_truncated(tmp_path):
    p = tmp_path / "note.nii.gz"
    p.write_bytes(b"hello, I am not an image")
    with pytest.raises(InvalidInput, match="not a readable NIfTI"):
        load_image(p)
    good = _img(tmp_path, np.ones((20, 20, 20, 4), np.float32), "good.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(InvalidInput, match="not a readable NIfTI"):
        load_image(tmp_path / "cut.nii.gz")


def test_labels(tmp_path):
    lab = np.zeros((10, 9, 8), np.uint8)
    lab[2:4] = 3
    out, _ = load_label(_img(tmp_path, lab, "l.nii.gz"), spatial_shape=(10, 9, 8))
    assert out.dtype == np.uint8 and np.array_equal(out, lab)
    with pytest.raises(InvalidInput, match="differs from its image"):
        load_label(_img(tmp_path, lab, "l.nii.gz"), spatial_shape=(10, 9, 9))
    with pytest.raises(InvalidInput, match="0..3"):
        load_label(_img(tmp_path, lab + 5, "l5.nii.gz"))
    with pytest.raises(InvalidInput, match="integer"):
        load_label(_img(tmp_path, lab.astype(np.float32) + 0.5, "lf.nii.gz"))
