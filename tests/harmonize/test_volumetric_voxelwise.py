"""Voxel-wise methods on registered scans: RAVEL and voxel-wise ComBat."""
import numpy as np
import pandas as pd
import pytest

from surfharm.harmonize import get
from surfharm.harmonize.combat import ComBat
from surfharm.harmonize.volumetric import RAVEL, VolumeHarmonizer, VoxelComBat
from surfharm.io.nifti import VolumeInputError

N_CONTROL = 400


def _ravel_data(n_scans=24, n_voxels=2000, seed=0):
    """Scans x voxels with one unwanted factor on every voxel and an age effect outside the control region."""
    rng = np.random.default_rng(seed)
    base = np.concatenate([rng.uniform(0.1, 0.3, N_CONTROL), rng.uniform(1.0, 2.0, n_voxels - N_CONTROL)])
    loading = rng.normal(0.3, 0.05, n_voxels)
    age_effect = np.concatenate([np.zeros(N_CONTROL), rng.normal(0.05, 0.01, n_voxels - N_CONTROL)])
    factor = rng.standard_normal(n_scans)
    age = rng.standard_normal(n_scans)
    X = base + np.outer(factor, loading) + np.outer(age, age_effect) + 0.01 * rng.standard_normal((n_scans, n_voxels))
    control = np.zeros(n_voxels, bool)
    control[:N_CONTROL] = True
    return X, factor, age, age_effect, control


def _slope(y, x):
    """Least-squares slope of every column of y on x (with intercept)."""
    xc = x - x.mean()
    return xc @ (y - y.mean(axis=0)) / (xc @ xc)


def test_ravel_removes_the_unwanted_factor_and_keeps_age():
    X, factor, age, age_effect, control = _ravel_data()
    covariates = pd.DataFrame({"age": age})
    est = RAVEL(normalize=None).fit(X, covariates=covariates, control_mask=control)
    assert abs(np.corrcoef(est.factors_[:, 0], factor)[0, 1]) > 0.99
    out = est.transform(X)
    before = np.abs(_slope(X, factor)).mean()
    after = np.abs(_slope(out, factor)).mean()
    assert after < 0.1 * before
    np.testing.assert_allclose(_slope(out, age)[N_CONTROL:], age_effect[N_CONTROL:], atol=0.02)


def test_ravel_applies_to_new_scans():
    X, factor, _, _, control = _ravel_data(n_scans=30)
    est = RAVEL(normalize=None).fit(X[:20], control_mask=control)
    new_factors = est.factors(X[20:].astype(np.float32))[:, 0]
    assert abs(np.corrcoef(new_factors, factor[20:])[0, 1]) > 0.99
    out = est.transform(X[20:])
    assert np.abs(_slope(out, factor[20:])).mean() < 0.1 * np.abs(_slope(X[20:], factor[20:])).mean()


def test_ravel_derives_a_dark_control_region():
    X, _, _, _, control = _ravel_data()
    est = RAVEL(normalize=None, control_quantile=0.1).fit(X)
    assert est.control_columns_.sum() > 50
    assert not np.any(est.control_columns_ & ~control)  # only truly dark voxels are taken


def test_ravel_volumes_form_matches_matrix_form_and_round_trips(tmp_path):
    X, _, _, _, control = _ravel_data(n_voxels=6 * 7 * 5 * 2)
    mask = np.zeros((12, 7, 5), bool)
    mask[:6] = True
    vols = []
    for row in X:
        vol = np.full(mask.shape, 0.0, np.float32)
        vol[mask] = row[: mask.sum()]
        vol[~mask] = 9.0
        vols.append(vol)
    control_vol = np.zeros(mask.shape, bool)
    control_vol[mask] = control[: mask.sum()]
    est = RAVEL().fit(vols, masks=mask, control_mask=control_vol)
    matrix = np.stack([v[mask] for v in vols])
    from_matrix = RAVEL().fit(matrix, control_mask=control[: mask.sum()]).transform(matrix)
    outs = est.transform(vols, masks=mask)
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out[mask], from_matrix[i], rtol=1e-4, atol=1e-4)
        # Outside the analysis mask: the WhiteStripe-normalized input, not the RAVEL correction.
        ws = get("white-stripe")().transform([vols[i]], masks=mask)[0]
        np.testing.assert_allclose(out[~mask], ws[~mask], rtol=1e-6)
    loaded = VolumeHarmonizer.load(est.save(tmp_path / "ravel.npz"))
    for a, b in zip(outs, loaded.transform(vols, masks=mask)):
        np.testing.assert_array_equal(a, b)


def test_ravel_bad_input():
    X, _, _, _, control = _ravel_data(n_scans=6)
    with pytest.raises(VolumeInputError, match="n_factors must be between 1 and n_scans - 1 = 5"):
        RAVEL(n_factors=6).fit(X, control_mask=control)
    with pytest.raises(VolumeInputError, match=r"control_mask has shape \(10,\); expected \(2000,\)"):
        RAVEL().fit(X, control_mask=np.ones(10, bool))
    with pytest.raises(VolumeInputError, match="control region holds 0 voxels"):
        RAVEL(normalize=None).fit(X, control_mask=np.zeros(X.shape[1], bool))
    X[2, 7] = np.nan
    with pytest.raises(VolumeInputError, match="X holds NaN at scan 2, voxel 7"):
        RAVEL().fit(X, control_mask=control)


# -- voxel-wise ComBat ------------------------------------------------------------------------------

def _site_volumes(seed=0, shape=(9, 8, 6)):
    rng = np.random.default_rng(seed)
    sites = np.repeat(["a", "b", "c"], 5)
    age = rng.uniform(20, 80, sites.size)
    mask = np.zeros(shape, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    anatomy = rng.uniform(50, 100, shape)
    shift = {"a": 0.0, "b": 15.0, "c": -10.0}
    scale = {"a": 1.0, "b": 1.8, "c": 0.6}
    vols = []
    for s, a in zip(sites, age):
        noise = scale[s] * 3.0 * rng.standard_normal(shape)
        vols.append((anatomy + 0.2 * a + shift[s] + noise).astype(np.float32))
    return vols, mask, sites, pd.DataFrame({"age": age})


def test_voxel_combat_is_combat_on_the_masked_voxels():
    vols, mask, sites, cov = _site_volumes()
    est = VoxelComBat().fit(vols, sites=sites, covariates=cov, masks=mask)
    outs = est.transform(vols, sites=sites, covariates=cov, masks=mask)
    Y = np.stack([v[mask] for v in vols])
    expected = ComBat().fit(Y, sites=sites, covariates=cov).transform(Y, sites=sites, covariates=cov)
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out[mask], expected[i], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(out[~mask], vols[i][~mask])
    # Site means once the simulated age effect (0.2 per year) is taken out: the biology differs by site.
    age = cov["age"].to_numpy()
    site_means = [np.mean([o[mask].mean() - 0.2 * a for o, s, a in zip(outs, sites, age) if s == k]) for k in "abc"]
    raw_means = [np.mean([v[mask].mean() - 0.2 * a for v, s, a in zip(vols, sites, age) if s == k]) for k in "abc"]
    assert np.ptp(site_means) < 0.1 * np.ptp(raw_means)


def test_voxel_combat_with_white_stripe_and_round_trip(tmp_path):
    vols, mask, sites, cov = _site_volumes(seed=1)
    est = VoxelComBat(normalize="zscore", combat={"eb": False}).fit(vols, sites=sites, covariates=cov, masks=mask)
    outs = est.transform(vols, sites=sites, covariates=cov, masks=mask)
    Y = np.stack([(v[mask] - v[mask].mean()) / v[mask].std() for v in vols])
    expected = ComBat(eb=False).fit(Y, sites=sites, covariates=cov).transform(Y, sites=sites, covariates=cov)
    np.testing.assert_allclose(np.stack([o[mask] for o in outs]), expected, rtol=1e-4, atol=1e-4)
    loaded = VolumeHarmonizer.load(est.save(tmp_path / "vc.npz"))
    assert isinstance(loaded, VoxelComBat) and loaded.combat == {"eb": False}
    for a, b in zip(outs, loaded.transform(vols, sites=sites, covariates=cov, masks=mask)):
        np.testing.assert_array_equal(a, b)


def test_voxel_combat_bad_input():
    vols, mask, sites, cov = _site_volumes()
    with pytest.raises(VolumeInputError, match="needs the site of every scan"):
        VoxelComBat().fit(vols, sites=None, masks=mask)
    with pytest.raises(VolumeInputError, match=r"combat options \['ebb'\] are not ComBat parameters"):
        VoxelComBat(combat={"ebb": True}).fit(vols, sites=sites, masks=mask)
    other = list(vols)
    other[3] = np.zeros((9, 8, 7), np.float32)
    with pytest.raises(VolumeInputError, match=r"volume 3 has shape \(9, 8, 7\).*registered to one grid"):
        VoxelComBat().fit(other, sites=sites, masks=[mask] * 3 + [np.ones((9, 8, 7), bool)] + [mask] * 11)
    est = VoxelComBat().fit(vols, sites=sites, masks=mask)
    with pytest.raises(VolumeInputError, match="fitted on a list of volumes; give the same form"):
        est.transform(np.stack([v[mask] for v in vols]), sites=sites)


def test_voxel_combat_matrix_form_keeps_missing_values_as_combat_does():
    vols, mask, sites, cov = _site_volumes(seed=2)
    X = np.stack([v[mask] for v in vols]).astype(np.float64)
    X[4, 10] = np.nan
    out = VoxelComBat().fit(X, sites=sites, covariates=cov).transform(X, sites=sites, covariates=cov)
    expected = ComBat().fit(X, sites=sites, covariates=cov).transform(X, sites=sites, covariates=cov)
    assert np.isnan(out[4, 10]) and np.isnan(out).sum() == 1
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
