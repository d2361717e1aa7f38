"""Longitudinal ComBat: REML against a dense textbook implementation, fit/apply, site removal."""
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar

from surfharm.harmonize import HarmonizerInputError, LongComBat


def _longitudinal(seed=0, n_subjects=40, n_features=12):
    rng = np.random.default_rng(seed)
    visits = rng.integers(1, 5, n_subjects)
    subjects = np.repeat([f"sub{i:02d}" for i in range(n_subjects)], visits)
    n = subjects.size
    # scanners change mid-study: the later visits tend to be at site B
    visit = np.concatenate([np.arange(v) for v in visits])
    sites = np.where(rng.random(n) < 0.3 + 0.15 * visit, "B", "A")
    age = np.repeat(rng.uniform(0, 2, n_subjects), visits) + 0.5 * visit
    intercept = rng.normal(0, 0.3, (n_subjects, n_features))
    codes = pd.factorize(subjects)[0]
    X = 2 + 0.3 * age[:, None] + intercept[codes] + rng.normal(0, 0.15, (n, n_features))
    X[sites == "B"] = X[sites == "B"] * 1.1 + 0.25
    return X, sites, pd.DataFrame({"age": age}), subjects


def _dense_reml(y, design, subjects):
    """REML of y = design beta + subject intercept + noise, by brute force on the full covariance."""
    Z = (subjects[:, None] == np.unique(subjects)[None, :]).astype(float)
    n, p = design.shape

    def neg_reml(log_lam):
        V = np.eye(n) + np.exp(log_lam) * Z @ Z.T
        Vi = np.linalg.inv(V)
        A = design.T @ Vi @ design
        beta = np.linalg.solve(A, design.T @ Vi @ y)
        r = y - design @ beta
        return 0.5 * ((n - p) * np.log(r @ Vi @ r) + np.linalg.slogdet(V)[1] + np.linalg.slogdet(A)[1])

    res = minimize_scalar(neg_reml, bounds=(-12, 8), method="bounded", options={"xatol": 1e-9})
    lam = np.exp(res.x)
    V = np.eye(n) + lam * Z @ Z.T
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(design.T @ Vi @ design, design.T @ Vi @ y)
    r = y - design @ beta
    return lam, beta, (r @ Vi @ r) / (n - p)


def test_reml_matches_a_dense_implementation():
    X, sites, cov, subjects = _longitudinal()
    model = LongComBat().fit(X, sites=sites, covariates=cov, subjects=subjects)
    design = np.column_stack([sites == "A", sites == "B", cov["age"]]).astype(float)
    for g in range(4):
        lam, beta, sigma2 = _dense_reml(X[:, g], design, subjects)
        assert model.lambda_[g] == pytest.approx(lam, rel=1e-4)
        assert np.allclose(model.site_coef_[:, g], beta[:2], rtol=0, atol=1e-6)
        assert model.covariate_coef_[0, g] == pytest.approx(beta[2], abs=1e-6)
        assert model.var_pooled_[g] == pytest.approx(sigma2, rel=1e-5)


def test_transform_reproduces_fit_transform_and_needs_subjects(tmp_path):
    X, sites, cov, subjects = _longitudinal()
    model = LongComBat().fit(X, sites=sites, covariates=cov, subjects=subjects)
    out = model.transform(X, sites=sites, covariates=cov, subjects=subjects)
    assert np.array_equal(out, LongComBat().fit_transform(X, sites=sites, covariates=cov, subjects=subjects))
    loaded = LongComBat.load(model.save(tmp_path / "long.npz"))
    assert np.array_equal(loaded.transform(X, sites=sites, covariates=cov, subjects=subjects), out)
    with pytest.raises(HarmonizerInputError, match="subjects="):
        model.transform(X, sites=sites, covariates=cov)


def test_site_effect_removed_within_subjects():
    X, sites, cov, subjects = _longitudinal(n_subjects=60)
    out = LongComBat().fit_transform(X, sites=sites, covariates=cov, subjects=subjects)
    # within-subject change between sites, after removing the age trend with the true slope
    def site_gap(data):
        resid = pd.DataFrame(data - 0.3 * cov["age"].to_numpy()[:, None])
        resid = resid - resid.groupby(subjects).transform("mean")
        return np.abs(resid[sites == "B"].mean() - resid[sites == "A"].mean()).mean()

    assert site_gap(out) < 0.3 * site_gap(X)


def test_partly_missing_values_are_refused_whole_nan_features_pass():
    X, sites, cov, subjects = _longitudinal()
    X[:, 3] = np.nan
    out = LongComBat().fit_transform(X, sites=sites, covariates=cov, subjects=subjects)
    assert np.isnan(out[:, 3]).all() and np.isfinite(np.delete(out, 3, axis=1)).all()
    X[2, 4] = np.nan
    with pytest.raises(HarmonizerInputError, match="feature 4"):
        LongComBat().fit(X, sites=sites, covariates=cov, subjects=subjects)
