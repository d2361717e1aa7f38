"""ComBat's estimator contract: fit/apply, persistence, streaming, smooth terms, the registry."""
import numpy as np
import pandas as pd
import pytest

import surfharm.harmonize as harmonize
from surfharm.harmonize import ComBat
from surfharm.harmonize._design import spline_basis


def _cohort(seed=0, n_per_site=(30, 40, 30), n_features=60):
    rng = np.random.default_rng(seed)
    sites = np.repeat(["s1", "s2", "s3"], n_per_site)
    n = sites.size
    age = rng.uniform(0, 3, n)
    # infant-like thickness: steep rise in the first year, then slow
    growth = 1.2 + 1.3 * (1 - np.exp(-2.5 * age))
    X = growth[:, None] * rng.normal(1, 0.05, n_features) + rng.normal(0, 0.08, (n, n_features))
    shift = rng.normal(0, 0.15, (3, n_features))
    scale = rng.gamma(30, 1 / 30, (3, n_features))
    codes = pd.factorize(sites, sort=True)[0]
    X = growth[:, None] + (X - growth[:, None]) * scale[codes] + shift[codes]
    return X, sites, pd.DataFrame({"age": age, "sex": rng.choice(["F", "M"], n)})


def test_registered_and_exposed():
    assert harmonize.get("combat") is ComBat
    assert harmonize.get("combat-long") is harmonize.LongComBat
    assert {"combat", "combat-long"} <= set(harmonize.available())
    # scikit-learn's repr: the class and the parameters set away from their defaults
    assert repr(ComBat()) == "ComBat()"
    assert "reference_site='A'" in repr(ComBat(reference_site="A"))


def test_transform_on_training_data_reproduces_fit_transform_exactly():
    # (neuroCombat's neuroCombatFromTraining does not: it replaces the covariate effects by their mean)
    X, sites, cov = _cohort()
    model = ComBat().fit(X, sites=sites, covariates=cov)
    assert np.array_equal(model.transform(X, sites=sites, covariates=cov),
                          ComBat().fit_transform(X, sites=sites, covariates=cov))


def test_apply_to_new_scans_uses_the_learned_parameters():
    X, sites, cov = _cohort()
    train = np.arange(len(X)) % 4 != 0
    model = ComBat().fit(X[train], sites=sites[train], covariates=cov[train])
    new = model.transform(X[~train], sites=sites[~train], covariates=cov[~train])
    # the ComBat formula with the learned state, written out for one new scan
    j = np.flatnonzero(~train)[0]
    i = model.sites_.index(sites[j])
    x = cov.loc[j, "age"], float(cov.loc[j, "sex"] == "M")
    mean = model.grand_mean_ + x[0] * model.covariate_coef_[0] + x[1] * model.covariate_coef_[1]
    expected = (X[j] - mean - np.sqrt(model.var_pooled_) * model.gamma_star_[i]) / np.sqrt(model.delta_star_[i]) + mean
    assert np.allclose(new[0], expected, rtol=0, atol=1e-12)
    # one scan at a time gives the same as the batch
    assert np.allclose(model.transform(X[[j]], sites=sites[[j]], covariates=cov.loc[[j]]), new[:1], rtol=0, atol=1e-13)


def test_site_effect_is_removed_and_age_effect_kept():
    X, sites, cov = _cohort()
    out = ComBat(smooth_terms=("age",)).fit_transform(X, sites=sites, covariates=cov)
    growth = 1.2 + 1.3 * (1 - np.exp(-2.5 * cov["age"].to_numpy()))[:, None]
    site_means_before = pd.DataFrame(X - growth).groupby(sites).mean()
    site_means_after = pd.DataFrame(out - growth).groupby(sites).mean()
    assert site_means_after.std().mean() < 0.3 * site_means_before.std().mean()
    assert np.corrcoef(cov["age"], out.mean(axis=1))[0, 1] > 0.7


def test_save_and_load_round_trip(tmp_path):
    X, sites, cov = _cohort()
    model = ComBat(smooth_terms=("age",), reference_site="s2").fit(X, sites=sites, covariates=cov)
    path = model.save(tmp_path / "combat.npz")
    loaded = ComBat.load(path)
    assert loaded.get_params() == model.get_params()
    assert loaded.sites_ == model.sites_
    assert np.array_equal(loaded.transform(X, sites=sites, covariates=cov),
                          model.transform(X, sites=sites, covariates=cov))
    with pytest.raises(ValueError, match="must end in .npz"):
        model.save(tmp_path / "combat.pkl")


def test_loading_another_model_class_is_refused(tmp_path):
    from surfharm.harmonize import LongComBat

    X, sites, cov = _cohort()
    path = ComBat().fit(X, sites=sites, covariates=cov).save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="not a LongComBat"):
        LongComBat.load(path)


def test_streamed_fit_over_a_memmap_equals_the_in_memory_fit(tmp_path, monkeypatch):
    import surfharm.harmonize._tiles as tiles

    X, sites, cov = _cohort(n_features=50)
    X[5, 3] = np.nan
    path = tmp_path / "maps.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    in_memory = ComBat().fit(X.astype(np.float32), sites=sites, covariates=cov)
    # blocks of 7 scans: many chunks, sites straddling chunk borders
    monkeypatch.setattr(tiles, "CHUNK_BYTES", 8 * 50 * 7)
    streamed = ComBat().fit(np.memmap(path, dtype=np.float32, mode="r", shape=X.shape), sites=sites, covariates=cov)
    for name in ("gamma_star_", "delta_star_", "var_pooled_", "grand_mean_", "covariate_coef_"):
        assert np.allclose(getattr(streamed, name), getattr(in_memory, name), rtol=1e-12, atol=1e-12), name
    out = np.memmap(tmp_path / "out.f32", dtype=np.float32, mode="w+", shape=X.shape)
    streamed.transform(np.memmap(path, dtype=np.float32, mode="r", shape=X.shape), sites=sites, covariates=cov, out=out)
    assert np.allclose(out, in_memory.transform(X.astype(np.float32), sites=sites, covariates=cov),
                       equal_nan=True, atol=1e-6)


def test_feature_blocks_and_tiles_give_the_one_block_result(monkeypatch):
    import surfharm.harmonize._tiles as tiles

    X, sites, cov = _cohort(n_features=50)
    X[5, 3] = X[7, 30] = X[8, 31] = np.nan     # missing values in several feature blocks
    X[:, 12] = 2.0                              # a constant feature inside a block
    X[:, 40] = np.nan                           # an all-missing feature
    whole = ComBat(reference_site="s2").fit(X, sites=sites, covariates=cov)
    expected = whole.transform(X, sites=sites, covariates=cov)
    # blocks of 8 features read in tiles of 3 scans: borders everywhere
    monkeypatch.setattr(tiles, "FEATURE_BLOCK", 8)
    monkeypatch.setattr(tiles, "CHUNK_BYTES", 8 * 8 * 3)
    blocked = ComBat(reference_site="s2").fit(X, sites=sites, covariates=cov)
    for name in ("gamma_star_", "delta_star_", "gamma_hat_", "delta_hat_", "var_pooled_", "grand_mean_",
                 "covariate_coef_", "unchanged_"):
        assert np.allclose(getattr(blocked, name), getattr(whole, name), rtol=1e-12, atol=1e-12, equal_nan=True), name
    out = blocked.transform(X, sites=sites, covariates=cov)
    assert np.allclose(out, expected, rtol=0, atol=1e-12, equal_nan=True)
    assert np.array_equal(out[sites == "s2"], X[sites == "s2"], equal_nan=True)
    assert np.array_equal(out[:, 12], X[:, 12]) and np.isnan(out[:, 40]).all()
    assert np.isnan(out[5, 3]) and np.isfinite(np.delete(out[:, 3], 5)).all()


def test_float32_in_float32_out():
    X, sites, cov = _cohort()
    out = ComBat().fit_transform(X.astype(np.float32), sites=sites, covariates=cov)
    assert out.dtype == np.float32
    assert np.allclose(out, ComBat().fit_transform(X, sites=sites, covariates=cov), atol=2e-6)


def test_smooth_term_recovers_a_nonlinear_age_curve_that_a_line_misses():
    X, sites, cov = _cohort()
    # the mean over features follows 1.2 + 1.3 (1 - exp(-2.5 age)): the spline fit should track it
    spline = ComBat(smooth_terms=("age",), eb=False).fit(X, sites=sites, covariates=cov)
    linear = ComBat(eb=False).fit(X, sites=sites, covariates=cov)
    ages = np.linspace(0.1, 2.9, 30)
    truth = 1.2 + 1.3 * (1 - np.exp(-2.5 * ages))

    def curve(model, design):
        return (model.grand_mean_ + design @ model.covariate_coef_[:design.shape[1]]).mean(axis=1)

    basis = spline_basis(ages, spline.encoder_.knots["age"])
    err_spline = np.abs(curve(spline, basis) - curve(spline, basis).mean() - (truth - truth.mean())).max()
    err_linear = np.abs(curve(linear, ages[:, None]) - curve(linear, ages[:, None]).mean()
                        - (truth - truth.mean())).max()
    assert err_spline < 0.05 < err_linear


def test_spline_basis_extrapolates_linearly_and_has_no_intercept():
    knots = np.array([0.0, 1.0, 2.0, 3.0])
    inside = spline_basis(np.linspace(0, 3, 50), knots)
    assert inside.shape == (50, 5)
    # the dropped spline keeps the basis free of the constant: no combination equals 1 everywhere
    coef, residual, *_ = np.linalg.lstsq(inside, np.ones(50), rcond=None)
    assert residual[0] > 1e-6
    beyond = spline_basis(np.array([4.0, 5.0, 6.0]), knots)
    assert np.allclose(beyond[2] - beyond[1], beyond[1] - beyond[0])


def test_more_than_one_smooth_term():
    X, sites, cov = _cohort()
    cov = cov.assign(bmi=np.random.default_rng(1).uniform(15, 35, len(cov)))
    model = ComBat(smooth_terms=("age", "bmi"), spline_df=4).fit(X, sites=sites, covariates=cov)
    assert [n.split(":")[0] for n in model.encoder_.names] == ["age"] * 4 + ["sex[M]"] + ["bmi"] * 4
    assert np.isfinite(model.transform(X, sites=sites, covariates=cov)).all()
