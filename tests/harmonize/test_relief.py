"""RELIEF: the decomposition removes site-specific low-rank structure and keeps the joint one."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import surfharm.harmonize as H
from surfharm.harmonize.relief import RELIEF, _mp_median, mp_noise_level


def _cohort(seed=1, sizes=(120, 100, 80), p=40):
    """A joint rank-2 structure in every site, one site-specific direction per site, age effect."""
    rng = np.random.default_rng(seed)
    names = np.array(list("abc")[: len(sizes)])
    sites = np.repeat(names, sizes)
    n = sites.size
    age = rng.uniform(20, 80, n)
    joint_dirs = np.linalg.qr(rng.normal(size=(p, 2)))[0]
    joint_scores = rng.normal(size=(n, 2)) * [4.0, 3.0]
    Y = 2.5 - 0.01 * age[:, None] + joint_scores @ joint_dirs.T + 0.5 * rng.normal(size=(n, p))
    site_dirs = {}
    for s in names:
        rows = sites == s
        site_dirs[s] = np.linalg.qr(rng.normal(size=(p, 1)))[0][:, 0]
        Y[rows] += 3.0 * rng.normal(size=(rows.sum(), 1)) * site_dirs[s] + rng.normal(0, 0.3, p)
    return Y, sites, pd.DataFrame({"age": age}), joint_dirs, joint_scores, site_dirs


def test_site_specific_structure_is_removed_and_joint_structure_kept():
    Y, sites, cov, joint_dirs, joint_scores, site_dirs = _cohort()
    model = RELIEF().fit(Y, sites=sites, covariates=cov)
    assert model.converged_ and model.n_iter_ < 1000
    out = model.transform(Y, sites=sites, covariates=cov)
    combat = H.ComBat().fit_transform(Y, sites=sites, covariates=cov)
    age_fit = -0.01 * (cov["age"].to_numpy()[:, None] - cov["age"].mean())
    for s, direction in site_dirs.items():
        rows = sites == s
        before = np.std(Y[rows] @ direction)
        after = np.std((out[rows] - age_fit[rows]) @ direction)
        after_combat = np.std((combat[rows] - age_fit[rows]) @ direction)
        # Soft-thresholding leaves about lambda_k of each site component in the noise: most, not all, goes.
        assert after < 0.55 * before, (s, before, after)
        assert after < 0.6 * after_combat, (s, after, after_combat)   # ComBat (per feature) cannot remove it
    kept = (out - age_fit) @ joint_dirs
    for i in range(2):
        assert np.corrcoef(kept[:, i], joint_scores[:, i])[0, 1] > 0.95
    # The joint structure is kept at its size (within 15%), not shrunk away.
    ratio = np.std(kept, axis=0) / np.std(joint_scores, axis=0)
    assert np.all(np.abs(ratio - 1) < 0.15), ratio


def test_thresholds_follow_each_site_whatever_the_row_order():
    Y, sites, cov, *_ = _cohort()
    out = RELIEF().fit_transform(Y, sites=sites, covariates=cov)
    perm = np.random.default_rng(5).permutation(len(sites))
    model = RELIEF().fit(Y[perm], sites=sites[perm], covariates=cov.iloc[perm])
    out_perm = model.transform(Y[perm], sites=sites[perm], covariates=cov.iloc[perm])
    np.testing.assert_allclose(out_perm, out[perm], atol=1e-10)
    # Site ranks belong to the sites (sorted labels), not to the order in which they appear.
    reordered = RELIEF().fit(Y[::-1], sites=sites[::-1], covariates=cov.iloc[::-1])
    np.testing.assert_array_equal(reordered.site_rank_, model.site_rank_)


def test_new_scans_of_known_sites_agree_with_fitting_on_all():
    Y, sites, cov, *_ = _cohort()
    all_out = RELIEF().fit_transform(Y, sites=sites, covariates=cov)
    rng = np.random.default_rng(3)
    held = np.zeros(len(sites), bool)
    held[rng.choice(len(sites), 20, replace=False)] = True
    model = RELIEF().fit(Y[~held], sites=sites[~held], covariates=cov[~held])
    new_out = model.transform(Y[held], sites=sites[held], covariates=cov[held].reset_index(drop=True))
    gap = new_out - all_out[held]
    correction = all_out[held] - Y[held]
    # Measured: the rms gap is about 8% of the rms correction (0.03 vs 0.42), the largest 0.13.
    assert np.sqrt(np.mean(gap**2)) < 0.15 * np.sqrt(np.mean(correction**2))
    assert np.abs(gap).max() < 0.3
    # On the training scans the linear maps reproduce the iterated decomposition up to its tolerance.
    assert model.training_gap_ < 1e-2


def test_small_sites_are_refused_naming_the_site_and_its_size():
    Y, sites, cov, *_ = _cohort(sizes=(60, 60, 9))
    with pytest.raises(ValueError, match=r"'c' \(9 scans\).*at least 10"):
        RELIEF().fit(Y, sites=sites, covariates=cov)
    RELIEF(min_site_scans=5).fit(Y, sites=sites, covariates=cov)          # the threshold is a parameter


def test_noise_level_of_pure_noise_and_of_low_rank_plus_noise():
    rng = np.random.default_rng(0)
    noise = 0.7 * rng.normal(size=(300, 50))
    assert mp_noise_level(noise) == pytest.approx(0.7, rel=0.05)
    signal = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 50)) * 3
    assert mp_noise_level(noise + signal) == pytest.approx(0.7, rel=0.1)
    assert _mp_median(1.0) == pytest.approx(0.6528, abs=1e-3)     # the Marchenko-Pastur median at ratio 1


def test_medial_wall_features_pass_through_and_other_nan_is_refused(tmp_path):
    Y, sites, cov, *_ = _cohort()
    Y[:, 5] = np.nan
    model = RELIEF().fit(Y, sites=sites, covariates=cov)
    out = model.transform(Y, sites=sites, covariates=cov)
    assert np.isnan(out[:, 5]).all() and np.isfinite(np.delete(out, 5, axis=1)).all()
    loaded = H.load(model.save(tmp_path / "relief.npz"))
    np.testing.assert_array_equal(loaded.transform(Y, sites=sites, covariates=cov), out)
    Y[3, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.transform(Y, sites=sites, covariates=cov)
