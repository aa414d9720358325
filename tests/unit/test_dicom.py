"""sparsesight.data.dicom without a PACS: geometry RAS <-> LPS, MR series <-> volume, the series mapping and
study assembly, SEG and Parametric Map round trips (tests/pacs does the same through Orthanc and the server)."""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from sparsesight.data.dicom import results, study
from sparsesight.data.dicom.geometry import affine_from_slices, slices_from_affine
from sparsesight.data.dicom.mr import StudyInfo, mr_series, mr_study
from sparsesight.data.dicom.series import series_to_volume
from sparsesight.data.dicom.web import to_bytes
from sparsesight.errors import InvalidInput


def oblique_affine(spacing=(1.2, 0.9, 2.5), origin=(-20.0, 31.0, -5.5), angle=0.3):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def reread(datasets):
    return [pydicom.dcmread(io.BytesIO(to_bytes(ds))) for ds in datasets]


@pytest.mark.parametrize("affine", [np.diag([4.0, 4.0, 4.0, 1.0]), oblique_affine(),
                                    np.diag([-1.0, 1.5, 2.0, 1.0])])
def test_series_round_trip_keeps_voxels_and_affine(affine):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 1000, size=(7, 5, 6)).astype(np.int16)
    series = reread(mr_series(vol, affine, "T1", StudyInfo("p"), 1))
    back, back_affine = series_to_volume(list(reversed(series)))  # order of arrival does not matter
    if np.linalg.det(np.diag([-1, -1, 1]) @ affine[:3, :3]) < 0:
        # slices are stacked along the normal of the orientation (right-handed in LPS, like dcm2niix): a
        # left-handed volume comes back with its third axis reversed, the same image in the world
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1, vol.shape[2] - 1
        back, back_affine = back[:, :, ::-1], back_affine @ flip
    np.testing.assert_allclose(back_affine, affine, atol=1e-5)
    np.testing.assert_array_equal(back, vol)


def test_lps_is_ras_with_x_and_y_flipped():
    geo = slices_from_affine(np.diag([2.0, 3.0, 4.0, 1.0]), 2)
    assert geo.orientation == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # +i is left->right in RAS: -x in LPS
    assert geo.pixel_spacing == (3.0, 2.0)  # (between rows = along j, between columns = along i)
    assert geo.positions[1] == (0.0, 0.0, 4.0)


def test_uneven_or_duplicate_slices_are_refused():
    with pytest.raises(InvalidInput, match="evenly spaced"):
        affine_from_slices([1, 0, 0, 0, 1, 0], [1, 1], [[0, 0, 0], [0, 0, 1], [0, 0, 3]])
    with pytest.raises(InvalidInput, match="share one position"):
        affine_from_slices([1, 0, 0, 0, 1, 0], [1, 1], [[0, 0, 0], [0, 0, 0]])


def test_mapping_parses_and_refuses_clashes():
    m = study.parse_mapping('{"T1ce": ["post gad"]}')
    assert m["T1ce"] == ("post gad",) and m["FLAIR"] == study.DEFAULT_MAPPING["FLAIR"]
    with pytest.raises(InvalidInput, match="unknown channel"):
        study.parse_mapping({"DWI": ["x"]})
    with pytest.raises(InvalidInput, match="claimed by both"):
        study.parse_mapping({"T1": ["T2"]})


def test_assign_series_names_what_is_missing_ambiguous_or_not_mr():
    S = study.SeriesInfo
    ok = [S("1", "FLAIR", "MR"), S("2", "t1", "MR"), S("3", "T1Gd", "MR"), S("4", "T2w", "MR"), S("5", "loc", "MR")]
    assert {c: s.uid for c, s in study.assign_series("st", ok, study.DEFAULT_MAPPING).items()} == \
        {"FLAIR": "1", "T1": "2", "T1ce": "3", "T2": "4"}
    with pytest.raises(InvalidInput, match="T2 is missing"):
        study.assign_series("st", ok[:3], study.DEFAULT_MAPPING)
    with pytest.raises(InvalidInput, match="T1 matches 2 series"):
        study.assign_series("st", ok + [S("6", "T1w", "MR")], study.DEFAULT_MAPPING)
    with pytest.raises(InvalidInput, match="modality CT"):
        study.assign_series("st", ok[:3] + [S("4", "T2", "CT")], study.DEFAULT_MAPPING)


def test_assemble_resamples_onto_the_reference_in_one_frame_of_reference():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    x = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 8, 6), np.float32)  # linear in i
    coarse = np.diag([4.0, 2.0, 2.0, 1.0])
    vols = {c: (x, affine) for c in ("FLAIR", "T1", "T1ce")}
    vols["T2"] = (x[::2], coarse)
    same = dict.fromkeys(vols, "for")
    image, out_affine, grids = study.assemble("st", vols, same)
    np.testing.assert_array_equal(out_affine, affine)
    assert image.shape == (10, 8, 6, 4)
    np.testing.assert_allclose(image[:9, ..., 3], x[:9], atol=1e-4)  # trilinear is exact on a linear ramp
    with pytest.raises(InvalidInput, match="resampling is off"):
        study.assemble("st", vols, same, resample=False)
    with pytest.raises(InvalidInput, match="another frame of reference"):
        study.assemble("st", vols, {**same, "T2": "other"})


def test_seg_round_trip_voxel_for_voxel_on_an_oblique_grid():
    affine = oblique_affine()
    rng = np.random.default_rng(1)
    label = rng.integers(0, 4, size=(9, 7, 5)).astype(np.uint8)
    source = reread(mr_study(np.zeros((9, 7, 5, 4)), affine, StudyInfo("p"))["FLAIR"])
    seg = pydicom.dcmread(io.BytesIO(to_bytes(results.label_to_seg(label, source, model="mlcsc"))))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["oedema", "non-enhancing core", "enhancing"]
    np.testing.assert_array_equal(results.seg_to_label(seg, label.shape, affine), label)
    shifted = affine.copy()
    shifted[:3, 3] += 0.01  # 10 micrometres off: not the same grid
    with pytest.raises(InvalidInput, match="not on a slice"):
        results.seg_to_label(seg, label.shape, shifted)
    with pytest.raises(InvalidInput, match="not classes"):
        results.label_to_seg(label + 3, source)


def test_parametric_map_within_its_quantisation():
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    rng = np.random.default_rng(2)
    values = rng.normal(size=(6, 5, 4)) * 7.5
    source = reread(mr_study(np.zeros((6, 5, 4, 4)), affine, StudyInfo("p"))["FLAIR"])
    pm = results.map_to_parametric_map(values, source, "r/1")
    pm = pydicom.dcmread(io.BytesIO(to_bytes(pm)))
    got, step = results.parametric_map_values(pm)
    assert step > 0 and np.max(np.abs(np.transpose(got, (2, 1, 0)) - values)) <= step / 2 + 1e-9
    unit = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("um", "UCUM")
