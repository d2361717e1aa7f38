"""Metrics, ROI summaries, leakage-safe folds and the baseline harmonizers."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from spherical_ops import icosphere
from surfharm import harmonize
from surfharm.evaluate import metrics
from surfharm.evaluate.crossval import cross_validate, site_folds
from surfharm.evaluate.methods import MethodSpec
from surfharm.evaluate.rois import DK_REGIONS, dk_labels, fsaverage_cortex_mask, roi_means
from surfharm.harmonize.base import HarmonizerInputError

RNG = np.random.default_rng(0)


def two_site_data(shift=0.0, n=40, p=300, scale=1.0):
    sites = np.repeat(["a", "b"], n // 2)
    X = RNG.standard_normal((n, p))
    X[sites == "b"] = X[sites == "b"] * scale + shift
    return X, sites


# -- traveling-subject metrics --------------------------------------------------------------------

def test_psnr_matches_definition_and_clips():
    target = np.full((1, 100), 2.0)
    pred = target + 0.1
    assert metrics.psnr(pred, target)[0] == pytest.approx(20 * np.log10(5) - 10 * np.log10(0.01))
    # Values above 5 mm are clipped before the error: 7 vs 5 counts as no error.
    assert np.isinf(metrics.psnr(np.full((1, 3), 7.0), np.full((1, 3), 5.0))[0])


def test_mae_and_pearson_ignore_nan():
    a = np.array([[1.0, 2.0, np.nan, 4.0]])
    b = np.array([[2.0, 2.0, 9.0, 4.0]])
    assert metrics.mae(a, b)[0] == pytest.approx(1 / 3)
    assert metrics.pearson_r(a, b)[0] == pytest.approx(stats.pearsonr([1, 2, 4], [2, 2, 4])[0])


def test_mesh_window_is_two_ring():
    sphere = icosphere(3)
    window = metrics.mesh_window(sphere.faces, sphere.n_vertices, rings=2)
    sizes = np.diff(window.indptr)
    assert set(sizes[:12]) == {16}                    # pentagons: 1 + 5 + 10
    assert set(sizes[12:]) <= {18, 19}                # hexagons: 1 + 6 + 12 (18 next to a pentagon)
    assert np.mean(sizes[12:] == 19) > 0.8
    np.testing.assert_allclose(np.asarray(window.sum(axis=1)).ravel(), 1.0)


def test_ssim_identity_one_and_drops_with_noise_and_blur():
    sphere = icosphere(4)
    window = metrics.mesh_window(sphere.faces, sphere.n_vertices)
    x = 2.5 + 0.5 * sphere.vertices[:, :1].T + 0.2 * np.sin(8 * sphere.vertices[:, 1])[None, :]
    assert metrics.ssim_sphere(x, x, window)[0] == pytest.approx(1.0)
    noisy = x + 0.3 * RNG.standard_normal(x.shape)
    shifted = x + 0.3
    s_noisy, s_shift = metrics.ssim_sphere(noisy, x, window)[0], metrics.ssim_sphere(shifted, x, window)[0]
    assert s_noisy < 0.9
    assert s_shift < 1.0 and s_shift > s_noisy  # a shift keeps structure, noise destroys it


def test_icc_matches_shrout_fleiss_table():
    # Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; ICC(2,1) = 0.29.
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)
    assert metrics.icc_absolute(ratings[:, :, None])[0] == pytest.approx(0.29, abs=0.005)
    # Sites that agree perfectly: ICC 1.
    same = np.repeat(RNG.standard_normal((5, 1, 3)), 3, axis=1)
    np.testing.assert_allclose(metrics.icc_absolute(same), 1.0)


# -- site-effect tests ------------------------------------------------------------------------------

def test_site_tests_detect_location_and_scale_and_not_noise():
    X, sites = two_site_data(shift=2.0)
    out = metrics.site_effect_tests(X, sites)
    assert out["frac_sig_anova"] > 0.95 and out["frac_sig_kruskal"] > 0.9
    X, sites = two_site_data(scale=3.0)
    out = metrics.site_effect_tests(X, sites)
    assert out["frac_sig_levene"] > 0.8 and out["frac_sig_anova"] < 0.05
    X, sites = two_site_data()
    out = metrics.site_effect_tests(X, sites)
    assert out["frac_sig_anova"] < 0.05 and out["frac_sig_levene"] < 0.05


def test_site_test_adjusts_for_covariates():
    # Age differs between sites and drives the features: not a site effect once age is in the model.
    sites = np.repeat(["a", "b"], 30)
    age = np.where(sites == "a", 30.0, 60.0) + RNG.normal(0, 5, 60)
    X = 0.05 * age[:, None] + 0.1 * RNG.standard_normal((60, 200))
    cov = pd.DataFrame({"age": age})
    assert metrics.site_effect_tests(X, sites)["frac_sig_anova"] > 0.9
    assert metrics.site_effect_tests(X, sites, cov)["frac_sig_anova"] < 0.1


def test_site_anova_matches_scipy_without_covariates():
    X, sites = two_site_data(shift=0.3, p=50)
    f, p = stats.f_oneway(X[sites == "a"], X[sites == "b"], axis=0)
    expected = np.mean(stats.false_discovery_control(p) <= 0.05)
    assert metrics.site_effect_tests(X, sites)["frac_sig_anova"] == pytest.approx(expected)


# -- biology ----------------------------------------------------------------------------------------

def test_covariate_effects_recover_known_slope_and_sex_d():
    n = 400
    age = RNG.uniform(20, 80, n)
    female = (RNG.random(n) < 0.5).astype(float)
    slope = np.linspace(-0.01, -0.002, 50)
    X = 2.5 + age[:, None] * slope + 0.1 * female[:, None] + 0.1 * RNG.standard_normal((n, 50))
    cov = pd.DataFrame({"age": age, "female": female})
    eff = metrics.covariate_effects(X, cov, ["age"], "female")
    np.testing.assert_allclose(eff["age_beta"], slope, atol=0.001)
    assert np.mean(eff["sex_d"]) == pytest.approx(1.0, abs=0.15)   # 0.1 mm / 0.1 mm SD
    # Partial R^2 of age: var(age * slope) / (that + noise variance), vertex by vertex.
    expected = (slope ** 2 * age.var()) / (slope ** 2 * age.var() + 0.01)
    assert np.mean(np.abs(eff["age_r2"] - expected)) < 0.03
    summary = metrics.compare_effects(eff, eff)
    assert summary["age_r2_ratio"] == pytest.approx(1.0) and summary["age_beta_r"] == pytest.approx(1.0)


def test_covariate_effects_name_missing_column():
    with pytest.raises(ValueError, match="log_age"):
        metrics.covariate_effects(np.zeros((5, 3)), pd.DataFrame({"age": np.arange(5.0)}), ["log_age"])


# -- ROIs -------------------------------------------------------------------------------------------

def test_dk_labels_and_cortex():
    labels = dk_labels("left", 5)
    assert labels.shape == (10242,) and labels.max() == 33
    assert len(np.unique(labels[labels >= 0])) == 34
    assert 0.85 < fsaverage_cortex_mask("left", 5).mean() < 0.95
    np.testing.assert_array_equal(dk_labels("left", 4), labels[:2562])   # nested meshes
    assert dk_labels("right", 6).shape == (40962,)


def test_roi_means_average_each_region():
    labels = dk_labels("left", 5)
    maps = np.where(labels >= 0, labels.astype(float), np.nan)[None, :].repeat(2, axis=0)
    maps[1] *= 2
    table = roi_means(maps, "left")
    assert list(table.columns) == [f"lh_{r}" for r in DK_REGIONS]
    np.testing.assert_allclose(table.iloc[0].to_numpy(), np.arange(34))
    np.testing.assert_allclose(table.iloc[1].to_numpy(), 2 * np.arange(34))


# -- folds and cross-validation -------------------------------------------------------------------

def test_folds_group_subjects_and_keep_every_site_in_training():
    sites = np.repeat(["a", "b", "c"], 12)
    subjects = np.repeat([f"s{i}" for i in range(18)], 2)  # two sessions per subject
    for train, test in site_folds(sites, subjects, n_splits=3):
        assert not set(subjects[train]) & set(subjects[test])
        assert set(sites[train]) == {"a", "b", "c"}


def test_folds_refuse_too_small_site():
    with pytest.raises(ValueError, match="site 'b' has 2 subjects; 5-fold"):
        site_folds(["a"] * 10 + ["b"] * 2, [str(i) for i in range(12)], n_splits=5)


class _Recorder(harmonize.Harmonizer):
    """Records the rows each fit saw (to prove that test rows never enter a fit)."""

    seen: list = []

    def fit(self, X, y=None, *, sites=None, covariates=None):
        _Recorder.seen.append(set(np.round(X[:, 0], 9)))
        return self

    def transform(self, X, *, sites=None, covariates=None):
        return np.asarray(X, dtype=float)


def test_cross_validation_refits_on_training_rows_only(monkeypatch):
    X, sites = two_site_data(shift=2.0, n=30, p=20)
    table = pd.DataFrame({"site": sites, "subject": [f"s{i}" for i in range(30)], "age": RNG.uniform(20, 80, 30)})
    folds = site_folds(table["site"], table["subject"], n_splits=3)
    monkeypatch.setitem(harmonize.base._REGISTRY, "recorder", _Recorder)
    _Recorder.seen = []
    result = cross_validate(MethodSpec("recorder"), X, table, folds)
    assert len(_Recorder.seen) == 3
    for seen, (train, test) in zip(_Recorder.seen, folds):
        assert seen == set(np.round(X[train, 0], 9))
        assert not seen & set(np.round(X[test, 0], 9))
    assert result.scores()["site_auroc"] > 0.95


# -- baselines --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["raw", "global-scaling", "mean-shift", "mean-std"])
def test_baselines_registered_and_keep_nan(name, tmp_path):
    X, sites = two_site_data(shift=1.0, scale=2.0)
    X[:, 0] = np.nan
    h = harmonize.get(name)().fit(X + 5, sites=sites)
    out = h.transform(X + 5, sites=sites)
    assert out.shape == X.shape and np.isnan(out[:, 0]).all() and np.isfinite(out[:, 1:]).all()
    loaded = type(h).load(h.save(tmp_path / "model.npz"))
    np.testing.assert_allclose(loaded.transform(X + 5, sites=sites), out)


def test_mean_shift_and_mean_std_equalise_sites():
    X, sites = two_site_data(shift=1.0, scale=2.0)
    b = sites == "b"
    shifted = harmonize.get("mean-shift")().fit_transform(X, sites=sites)
    np.testing.assert_allclose(shifted[b].mean(0), shifted[~b].mean(0), atol=1e-12)
    matched = harmonize.get("mean-std")().fit_transform(X, sites=sites)
    np.testing.assert_allclose(matched[b].std(0, ddof=1), matched[~b].std(0, ddof=1), rtol=1e-10)


def test_reference_site_is_returned_unchanged():
    X, sites = two_site_data(shift=1.0, scale=2.0)
    for name in ("mean-shift", "mean-std", "global-scaling"):
        out = harmonize.get(name)(reference_site="a").fit_transform(X + 3, sites=sites)
        np.testing.assert_allclose(out[sites == "a"], X[sites == "a"] + 3)


def test_global_scaling_matches_global_means():
    X, sites = two_site_data(shift=1.0)
    X = X + 5
    out = harmonize.get("global-scaling")(reference_site="a").fit_transform(X, sites=sites)
    assert out[sites == "b"].mean() == pytest.approx(X[sites == "a"].mean())


def test_baseline_errors_name_the_value():
    X, sites = two_site_data()
    h = harmonize.get("mean-shift")().fit(X, sites=sites)
    with pytest.raises(HarmonizerInputError, match="'z'"):
        h.transform(X[:2], sites=["z", "a"])
    with pytest.raises(HarmonizerInputError, match="features"):
        h.transform(X[:, :5], sites=sites)
    with pytest.raises(HarmonizerInputError, match="reference_site 'q'"):
        harmonize.get("mean-std")(reference_site="q").fit(X, sites=sites)
    with pytest.raises(harmonize.NotFittedError):
        harmonize.get("raw")().transform(X, sites=sites)


def test_method_spec_parsing():
    spec = MethodSpec.parse("ref=combat:reference_site=A,eb=false,subjects=@subject")
    assert (spec.label, spec.name) == ("ref", "combat")
    assert spec.options == {"reference_site": "A", "eb": False}
    assert spec.column_kwargs == {"subjects": "subject"}
    assert MethodSpec.parse("mean-std").options == {}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        MethodSpec.parse("combat:eb")
    with pytest.raises(KeyError, match="unknown harmonizer"):
        MethodSpec("nope").build()
