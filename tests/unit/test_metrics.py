"""metrics.grid_ceiling_dice: what a label keeps after a trip through a coarser read-out grid."""
import numpy as np

from sparsesight.metrics import grid_ceiling_dice


def _label(shell: int) -> np.ndarray:
    """A 32^3 label: oedema block, a core cube inside it and an enhancing shell `shell` voxels thick around the core."""
    y = np.zeros((32, 32, 32), np.int64)
    y[4:28, 4:28, 4:28] = 1
    y[8 - shell:24 + shell, 8 - shell:24 + shell, 8 - shell:24 + shell] = 3
    y[8:24, 8:24, 8:24] = 2
    return y


def test_block_aligned_regions_survive_every_factor():
    y = _label(4)  # every boundary on the 4-voxel grid: only the corners are rounded by the trilinear upsampling
    assert grid_ceiling_dice(y, 1) == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    for f in (2, 4):
        assert all(v > 0.97 for v in grid_ceiling_dice(y, f).values())


def test_thin_rim_is_lost_on_a_coarse_grid_and_kept_on_a_finer_one():
    y = _label(2)  # a 2-voxel enhancing shell: on the 2-voxel grid, half of each 4-voxel block
    coarse, fine = grid_ceiling_dice(y, 4), grid_ceiling_dice(y, 2)
    assert coarse["ET"] < 0.5 < 0.95 < fine["ET"]
    assert coarse["WT"] > 0.9  # the corners rounded


def test_shape_not_a_multiple_of_the_factor():
    y = _label(4)[:30, :31, :29]
    d = grid_ceiling_dice(y, 4)
    assert set(d) == {"WT", "TC", "ET"} and all(0.9 < v <= 1.0 for v in d.values())
