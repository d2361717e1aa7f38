"""Slice-based deep image harmonizers: the slicing helpers, the DeepImageHarmonizer base and DeepHarmony."""
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")

from sklearn.base import clone  # noqa: E402

from surfharm import harmonize  # noqa: E402
from surfharm.harmonize.volumetric import slices as sl  # noqa: E402
from surfharm.harmonize.volumetric.deep_harmony import DeepHarmony  # noqa: E402
from surfharm.io.nifti import VolumeInputError  # noqa: E402
from surfharm.simulate.volumes import simulate_volumetric_cohort  # noqa: E402

TRAIN = ["sub-001", "sub-002", "sub-003", "sub-004"]
SMALL = dict(depth=3, base_channels=8, batch_size=8)
# Second contrast: a T2-like image from the tissue labels (CSF bright, white matter dark), seen by each
# scanner through its own gain and curve.
T2_TISSUE = np.array([0.0, 1.0, 0.55, 0.3], np.float32)
T2_SCANNERS = {"scanner1": (800.0, 1.0), "scanner2": (300.0, 1.4)}


@pytest.fixture(scope="module")
def cohort():
    torch.set_num_threads(1)
    return simulate_volumetric_cohort(n_sites=2, n_subjects=6, traveling=True, step=2, seed=0)


def _t2(cohort, i, rng):
    gain, gamma = T2_SCANNERS[cohort.sites[i]]
    truth = ndimage.gaussian_filter(T2_TISSUE[cohort.tissue[i]], 0.7)
    image = gain * truth ** gamma * (1 + 0.02 * rng.standard_normal(truth.shape))
    return np.where(cohort.masks[i], np.maximum(image, 1.0), 0).astype(np.float32)


def _rows(cohort, subjects):
    return np.flatnonzero(cohort.table["subject"].isin(subjects).to_numpy())


def _fit(cohort, rows, **params):
    model = DeepHarmony(**{**SMALL, **params})
    X = [cohort.images[i] for i in rows]
    return model.fit(X, sites=cohort.sites[rows], masks=[cohort.masks[i] for i in rows],
                     subjects=cohort.table["subject"].to_numpy()[rows])


@pytest.fixture(scope="module")
def fitted(cohort):
    return _fit(cohort, _rows(cohort, TRAIN), steps=150)


def _held_out(cohort):
    """(source rows on scanner2, matching target rows on scanner1) of the subjects not trained on."""
    test = _rows(cohort, ["sub-005", "sub-006"])
    src = [i for i in test if cohort.sites[i] == "scanner2"]
    tgt = {cohort.table["subject"][i]: i for i in test if cohort.sites[i] == "scanner1"}
    return src, [tgt[cohort.table["subject"][i]] for i in src]


def _relative_error(out, target, mask):
    return float(np.mean(np.abs(out[mask] - target[mask])) / np.mean(target[mask]))


# -- slices ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("context", [0, 2])
def test_slices_round_trip_inside_the_mask(cohort, axis, context):
    vol, mask = cohort.images[0], cohort.masks[0]
    two = np.stack([vol, 2 * vol + 1])
    geometry = sl.slice_geometry(vol.shape, axis, depth=3, context=context)
    images, masks, positions = sl.volume_to_slices(two, mask, geometry)
    assert images.shape[1] == 2 * (2 * context + 1)
    assert all(s % 8 == 0 for s in images.shape[2:]) and masks.shape == (len(positions), *images.shape[2:])
    assert masks.sum() == mask.sum()                      # every mask voxel lands in exactly one slice
    back = sl.slices_to_volume(images[:, sl.centre_channels(2, context)], positions, geometry, mask)
    np.testing.assert_array_equal(back[:, mask], two[:, mask])
    assert (back[:, ~mask] == 0).all()


def test_context_channels_hold_the_neighbours():
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    mask = np.ones(vol.shape, bool)
    geometry = sl.slice_geometry(vol.shape, axis=2, context=1)
    images, _, positions = sl.volume_to_slices(vol, mask, geometry)
    np.testing.assert_array_equal(images[3, 0], vol[:, :, 2])
    np.testing.assert_array_equal(images[3, 2], vol[:, :, 4])
    assert (images[0, 0] == 0).all()                      # beyond the volume: zeros


def test_slice_size_can_be_raised_for_several_grids():
    geometry = sl.slice_geometry((10, 11, 9), axis=0, depth=2, size=(13, 9))
    assert geometry.padded == (16, 12)
    with pytest.raises(VolumeInputError, match="slice_axis"):
        sl.slice_geometry((10, 11, 9), axis=3)


def test_intensity_factor_is_the_in_mask_percentile():
    data = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    mask = data >= 500
    assert sl.intensity_factor(data, mask) == pytest.approx(np.percentile(data[mask], 99))
    with pytest.raises(VolumeInputError, match="scan 7"):
        sl.intensity_factor(np.zeros((3, 3, 3)), np.ones((3, 3, 3), bool), name="scan 7")


# -- base input checks -------------------------------------------------------------------------------------------

def test_inputs_are_refused_with_clear_messages(cohort):
    rows = _rows(cohort, TRAIN)
    X = [cohort.images[i] for i in rows]
    sites, subjects = cohort.sites[rows], cohort.table["subject"].to_numpy()[rows]
    with pytest.raises(VolumeInputError, match="cannot take a matrix"):
        DeepHarmony().fit(np.ones((4, 100)), sites=sites[:4], subjects=subjects[:4])
    with pytest.raises(VolumeInputError, match="scan 0 has no contrast 't2'"):
        DeepHarmony(contrasts=("t1", "t2")).fit([{"t1": x} for x in X], sites=sites, subjects=subjects)
    with pytest.raises(VolumeInputError, match="single volume.*dict"):
        DeepHarmony(contrasts=("t1", "t2")).fit(X, sites=sites, subjects=subjects)
    with pytest.raises(harmonize.HarmonizerInputError, match="subjects="):
        DeepHarmony().fit(X, sites=sites)
    # each subject on one site only: no traveling subject links scanner2 to the target
    alone = np.array([f"{s}-{site}" for s, site in zip(subjects, sites)])
    with pytest.raises(harmonize.HarmonizerInputError, match=r"\['scanner2'\] share no subject.*'scanner1'"):
        DeepHarmony().fit(X, sites=sites, subjects=alone)
    with pytest.raises(harmonize.HarmonizerInputError, match="target_site 'nowhere'"):
        DeepHarmony(target_site="nowhere").fit(X, sites=sites, subjects=subjects)


def test_transform_refuses_unseen_sites_and_other_targets(fitted, cohort):
    with pytest.raises(harmonize.HarmonizerInputError, match=r"\['scanner9'\] were not seen"):
        fitted.transform([cohort.images[0]], sites=["scanner9"], masks=[cohort.masks[0]])
    with pytest.raises(harmonize.HarmonizerInputError, match="map to 'scanner1' only"):
        fitted.transform([cohort.images[0]], sites=["scanner2"], masks=[cohort.masks[0]], target_site="scanner2")


# -- DeepHarmony -----------------------------------------------------------------------------------------------

def test_deepharmony_beats_the_identity_on_held_out_traveling_subjects(fitted, cohort):
    src, tgt = _held_out(cohort)
    out = fitted.transform([cohort.images[i] for i in src], sites=cohort.sites[src],
                           masks=[cohort.masks[i] for i in src])
    scale = fitted.site_scale_[fitted.target_, 0]
    for o, i, j in zip(out, src, tgt):
        mask = cohort.masks[i] & cohort.masks[j]
        assert o.dtype == np.float32 and o.shape == cohort.images[i].shape
        assert (o[~cohort.masks[i]] == 0).all()
        # the identity in the target's unit: the source scan's normalised intensities times the target's scale
        identity = cohort.images[i] / sl.intensity_factor(cohort.images[i], cohort.masks[i]) * scale
        err, base = _relative_error(o, cohort.images[j], mask), _relative_error(identity, cohort.images[j], mask)
        # measured: about 0.05 against 0.10 after 150 steps
        assert err < 0.7 * base, (err, base)
    assert fitted.n_pairs_ > 100 and fitted.history_[-1]["loss"] < fitted.history_[0]["loss"]


def test_target_site_scans_are_returned_unchanged(fitted, cohort):
    out = fitted.transform([cohort.images[0]], sites=["scanner1"], masks=[cohort.masks[0]])
    np.testing.assert_array_equal(out[0], cohort.images[0])


def test_save_and_load_give_identical_outputs(fitted, cohort, tmp_path):
    path = fitted.save(tmp_path / "dh.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["method"] == "deepharmony" and meta["sites"] == ["scanner1", "scanner2"]
    loaded = harmonize.load(path)
    assert type(loaded) is DeepHarmony and loaded.get_params() == {**fitted.get_params(), "progress": False}
    src, _ = _held_out(cohort)
    X, masks = [cohort.images[i] for i in src], [cohort.masks[i] for i in src]
    for a, b in zip(fitted.transform(X, sites=cohort.sites[src], masks=masks),
                    loaded.transform(X, sites=cohort.sites[src], masks=masks)):
        np.testing.assert_array_equal(a, b)


def test_training_is_deterministic_for_a_seed(cohort):
    rows = _rows(cohort, TRAIN[:2])
    X, masks = [cohort.images[rows[1]]], [cohort.masks[rows[1]]]
    outs = [_fit(cohort, rows, steps=3, seed=s).transform(X, sites=["scanner2"], masks=masks)[0] for s in (1, 1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_resumed_training_repeats_the_uninterrupted_run(cohort, tmp_path):
    rows = _rows(cohort, TRAIN[:2])
    X, masks = [cohort.images[rows[1]]], [cohort.masks[rows[1]]]
    whole = _fit(cohort, rows, steps=4).transform(X, sites=["scanner2"], masks=masks)[0]
    checkpoint = tmp_path / "ck.safetensors"
    _fit(cohort, rows, steps=2, checkpoint=checkpoint)
    resumed = _fit(cohort, rows, steps=4, checkpoint=checkpoint, resume=True)
    assert resumed.history_[-1]["step"] == 4
    np.testing.assert_array_equal(resumed.transform(X, sites=["scanner2"], masks=masks)[0], whole)


def test_clone_and_params_follow_the_estimator_contract(fitted):
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params() and not hasattr(copy, "networks_")
    with pytest.raises(harmonize.NotFittedError):
        copy.transform([np.ones((4, 4, 4))], sites=["scanner1"])
    assert harmonize.get("deepharmony") is DeepHarmony and "deepharmony" in harmonize.available()
    assert DeepHarmony.metadata_names() == ("sites", "masks", "subjects")


def test_two_contrasts_with_context_in_and_out(cohort):
    rng = np.random.default_rng(0)
    rows = _rows(cohort, TRAIN)
    scans = [{"t1": cohort.images[i], "t2": _t2(cohort, i, rng)} for i in range(len(cohort.images))]
    model = DeepHarmony(contrasts=("t1", "t2"), context=1, steps=150, **SMALL)
    model.fit([scans[i] for i in rows], sites=cohort.sites[rows], masks=[cohort.masks[i] for i in rows],
              subjects=cohort.table["subject"].to_numpy()[rows])
    assert model.n_in_channels_ == 6 and model.site_scale_.shape == (2, 2)
    src, tgt = _held_out(cohort)
    out = model.transform([scans[i] for i in src], sites=cohort.sites[src], masks=[cohort.masks[i] for i in src])
    for o, i, j in zip(out, src, tgt):
        assert set(o) == {"t1", "t2"} and o["t2"].dtype == np.float32
        mask = cohort.masks[i] & cohort.masks[j]
        identity = scans[i]["t2"] / sl.intensity_factor(scans[i]["t2"], cohort.masks[i]) * model.site_scale_[0, 1]
        assert _relative_error(o["t2"], scans[j]["t2"], mask) < _relative_error(identity, scans[j]["t2"], mask)


def test_cli_harmonize_with_images_and_a_table(cohort, tmp_path, monkeypatch):
    from surfharm import cli

    monkeypatch.setattr(cli, "_SUBCOMMAND_MODULES", ("harmonize",))
    rows = _rows(cohort, TRAIN[:2])
    (tmp_path / "img").mkdir()
    names = []
    for i in rows:
        name = f"{cohort.table['subject'][i]}_{cohort.sites[i]}.nii.gz"
        nib.save(nib.Nifti1Image(cohort.images[i], cohort.affine), tmp_path / "img" / name)
        names.append(name)
    nib.save(nib.Nifti1Image(cohort.common_mask().astype(np.uint8), cohort.affine), tmp_path / "mask.nii.gz")
    pd.DataFrame({"image": names, "site": cohort.sites[rows], "subject": cohort.table["subject"][rows]}).to_csv(
        tmp_path / "scans.csv", index=False)
    out = tmp_path / "out"
    assert cli.main(["harmonize", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "mask.nii.gz"),
                     "--participants", str(tmp_path / "scans.csv"), "--method",
                     "deepharmony:steps=2,depth=2,base_channels=4", "--out", str(out), "--quiet"]) == 0
    written = sorted(p.name for p in (out / "volumes").glob("*_deepharmony.nii.gz"))
    assert len(written) == len(rows)
    model = harmonize.load(out / "volumes" / "model.safetensors")
    assert model.steps == 2 and model.n_pairs_ > 0
