"""BraTS-like 4-modality brain tumour phantom on real anatomy (MNI152 2009a, shipped with nilearn).

One case (case.py) is made in these steps, each a small named function of anatomy.py, tumour.py or
contrast.py (random fields: fields.py; the dataset on disk: dataset.py):

1. ``tissue_maps``      CSF / GM / WM fractions from the MNI152 GM and WM probability maps and the T1
                        template (CSF = brain mask - GM - WM, ventricles from low T1 deep in the brain),
                        placed on the BraTS grid 240 x 240 x 155 at 1 mm (world coordinates = MNI mm, RAS)
                        and block-averaged to ``downsample`` mm (partial volume of coarse voxels).
2. ``vessel_map``       thin tubes (intersections of two level sets of random fields) in the sulcal CSF,
                        bright on T1ce like cortical veins.
3. ``case_transform``   a small random rotation / scaling / shift of the anatomy per case.
4. ``mass_effect``      tissue pushed radially away from each lesion centre.
5. ``tumour_mask``      soft (partial-volume) maps of necrosis, enhancing rim and non-enhancing solid
                        tumour inside an irregular ellipsoid (``radial_modulation``);
   ``oedema_mask``      oedema around it that reaches further in white matter than in grey matter.
6. ``compose_image``    per-tissue intensity table (``CONTRAST`` x ``BASE_WM``) with per-case jitter,
                        mixed by the fractions; then ``partial_volume`` blur, ``bias_field`` and
                        ``rician_noise``; skull-stripped (0 outside the brain) like BraTS.
7. ``variety``          (off-grid cases only, ``make_case(..., variety=True)``, variety.py) wider head size and
                        pose, ``warp_anatomy`` (a smooth non-linear deformation), 1-3 lesions and small ones,
                        wider contrast and bias field, then ``regrid`` onto a ``random_grid`` (0.8-1.5 mm,
                        slices up to 3 mm, any axis orientation, a field of view cropped to the head).

Everything random is drawn from streams derived from the case seed, and the geometry is defined in mm,
so the same seed gives the same phantom (up to resolution) at every ``downsample``.
"""
from __future__ import annotations

from .anatomy import (
           BRATS_SHAPE,
           case_transform,
           grid_affine,
           load_mni152,
           mass_effect,
           tissue_maps,
           vessel_map,
)
from .case import Case, make_case
from .contrast import (
           BASE_WM,
           CONTRAST,
           bias_field,
           compose_image,
           contrast_table,
           partial_volume,
           rician_noise,
)
from .dataset import case_seed, write_dataset
from .fields import radial_modulation, random_fourier_field
from .tumour import oedema_mask, tumour_labels, tumour_mask

__all__ = ["Case", "make_case", "write_dataset", "case_seed", "grid_affine", "BRATS_SHAPE", "CONTRAST", "BASE_WM",
           "tissue_maps", "vessel_map", "case_transform", "mass_effect", "tumour_mask", "oedema_mask",
           "tumour_labels", "contrast_table", "compose_image", "partial_volume", "bias_field", "rician_noise",
           "random_fourier_field", "radial_modulation", "load_mni152"]
