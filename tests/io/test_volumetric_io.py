"""Volumetric inputs: NIfTI reading, mask checks and the clear errors on bad input."""
import nibabel as nib
import numpy as np
import pytest

from surfharm.harmonize import HarmonizerInputError
from surfharm.harmonize.volumetric import Nyul, WhiteStripe, ZScore
from surfharm.io.nifti import (
    VolumeInputError,
    derive_mask,
    load_mask,
    load_volume,
    nifti_stem,
    save_volume,
)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _brain(seed=0, shape=(12, 14, 10)):
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, np.float32)
    data[2:-2, 2:-2, 2:-2] = rng.uniform(100, 200, (shape[0] - 4, shape[1] - 4, shape[2] - 4))
    return data, data > 0


def _save(tmp_path, name, data, affine=AFFINE):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return str(path)


def test_mask_of_another_shape_names_both_files(tmp_path):
    data, mask = _brain()
    img = _save(tmp_path, "t1.nii.gz", data)
    bad = _save(tmp_path, "mask.nii.gz", mask[:-1].astype(np.uint8))
    with pytest.raises(VolumeInputError, match=r"mask .*mask\.nii\.gz has shape \(11, 14, 10\).*t1\.nii\.gz.*\(12, 14, 10\)"):  # noqa: E501
        ZScore().transform([img], masks=[bad])


def test_mask_of_another_affine_is_refused(tmp_path):
    data, mask = _brain()
    img = _save(tmp_path, "t1.nii.gz", data)
    shifted = AFFINE.copy()
    shifted[0, 3] = 4.0
    bad = _save(tmp_path, "mask.nii.gz", mask.astype(np.uint8), affine=shifted)
    with pytest.raises(VolumeInputError, match="another affine.*largest difference 4 mm"):
        ZScore().transform([img], masks=[bad])


def test_empty_mask_is_refused(tmp_path):
    data, mask = _brain()
    bad = _save(tmp_path, "empty.nii.gz", np.zeros_like(mask, np.uint8))
    with pytest.raises(VolumeInputError, match=r"empty\.nii\.gz is empty"):
        ZScore().transform([data], masks=[bad])


@pytest.mark.parametrize("shape, message", [((12, 14, 10, 2), "expected a 3-D volume.*split a 4-D"),
                                            ((12, 14), "expected a 3-D volume, got shape \\(12, 14\\)")])
def test_non_3d_images_are_refused(tmp_path, shape, message):
    path = _save(tmp_path, "bad.nii.gz", np.ones(shape, np.float32))
    with pytest.raises(VolumeInputError, match=message):
        load_volume(path)


def test_single_volume_4d_is_squeezed(tmp_path):
    data, _ = _brain()
    vol = load_volume(_save(tmp_path, "t1.nii.gz", data[..., None]))
    assert vol.data.shape == data.shape
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, AFFINE)


def test_nan_inside_mask_is_refused_but_outside_is_kept(tmp_path):
    data, mask = _brain()
    inside = data.copy()
    inside[5, 6, 4] = np.nan
    path = _save(tmp_path, "nan.nii.gz", inside)
    with pytest.raises(VolumeInputError, match=r"nan\.nii\.gz: 1 NaN voxels inside the brain mask, first at voxel \(5, 6, 4\)"):  # noqa: E501
        ZScore().transform([path], masks=[mask])
    outside = data.copy()
    outside[0, 0, 0] = np.nan
    out = ZScore().transform([outside], masks=[mask])[0]
    assert np.isnan(out[0, 0, 0])
    assert np.isfinite(out[mask]).all()


def test_inf_and_missing_files_are_refused(tmp_path):
    data, mask = _brain()
    data[3, 3, 3] = np.inf
    with pytest.raises(VolumeInputError, match="infinite voxels"):
        load_volume(data)
    with pytest.raises(VolumeInputError, match="nope.nii.gz: file does not exist"):
        load_volume(tmp_path / "nope.nii.gz")


def test_mask_count_must_match_scans():
    data, mask = _brain()
    with pytest.raises(VolumeInputError, match="got 2 masks for 3 volumes"):
        Nyul().fit([data, data, data], masks=[mask, mask])


def test_matrix_form_with_masks_and_lone_3d_array_are_refused():
    data, mask = _brain()
    with pytest.raises(VolumeInputError, match="mark voxels outside a scan's mask with NaN"):
        ZScore().transform(np.ones((2, 5)), masks=[mask, mask])
    with pytest.raises(VolumeInputError, match="pass a list of volumes"):
        ZScore().transform(data)


def test_volume_input_error_is_a_harmonizer_input_error():
    assert issubclass(VolumeInputError, HarmonizerInputError)
    assert issubclass(VolumeInputError, ValueError)


def test_constant_scan_is_refused_with_its_name():
    flat = np.zeros((8, 8, 8), np.float32)
    flat[2:6, 2:6, 2:6] = 7.0
    with pytest.raises(VolumeInputError, match="volume 0: the standard deviation inside the mask is 0"):
        ZScore().transform([flat])
    with pytest.raises(VolumeInputError, match="percentiles 1 and 10 have the same intensity"):
        Nyul().fit([flat])


def test_derive_mask_keeps_largest_component_and_fills_holes():
    data, mask = _brain()
    data[6, 7, 5] = 0.0          # a hole
    data[0, 0, 0] = 50.0         # a speck outside the brain
    derived = derive_mask(load_volume(data))
    np.testing.assert_array_equal(derived, mask)


def test_load_mask_accepts_probability_maps():
    data, mask = _brain()
    prob = np.where(mask, 0.9, 0.1).astype(np.float32)
    np.testing.assert_array_equal(load_mask(prob, load_volume(data)), mask)


def test_save_volume_writes_float32_with_the_input_grid_and_never_over_an_input(tmp_path):
    data, mask = _brain()
    src = _save(tmp_path, "sub-01_T1w.nii.gz", data.astype(np.int16))
    out = WhiteStripe().transform([src], masks=[mask])[0]
    path = save_volume(out, tmp_path / "sub-01_T1w_ws.nii.gz", like=src, inputs=[src])
    img = nib.load(path)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, AFFINE)
    np.testing.assert_allclose(img.get_fdata(), out, rtol=1e-6)
    with pytest.raises(ValueError, match="it is an input file"):
        save_volume(out, src, like=src, inputs=[src])
    assert nib.load(src).get_data_dtype() == np.int16
    assert nifti_stem(path) == "sub-01_T1w_ws"
