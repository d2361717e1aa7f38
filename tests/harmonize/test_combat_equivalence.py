"""ComBat against neuroCombat 0.2.12 on the configurations it gets right, and against the formulas.

Tolerance: 1e-6 x the data's standard deviation (the outputs agree to ~1e-13 in practice).
neuroCombat is only a test extra: these tests skip when it is not installed.
"""
import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from surfharm.harmonize import ComBat

neuroCombat = pytest.importorskip("neuroCombat", reason="neuroCombat (test extra) is not installed").neuroCombat

DK_CSV = Path(__file__).parents[1] / "data" / "openneuro_dk" / "dk_thickness_4sites.csv"
CONFIGS = [
    dict(),
    dict(parametric=False),
    dict(eb=False),
    dict(mean_only=True),
    dict(mean_only=True, parametric=False),
    dict(mean_only=True, eb=False),
]


def _run_neurocombat(X, table, categorical, continuous, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat prints progress
        result = neuroCombat(dat=X.T.copy(), covars=table, batch_col="site", categorical_cols=categorical,
                             continuous_cols=continuous, **kwargs)
    return result["data"].T


def _simulated(seed=1, n_features=300):
    rng = np.random.default_rng(seed)
    site = np.repeat(["siteA", "siteB", "siteC"], [30, 50, 40])
    n = site.size
    # neuroCombat casts continuous covariates to float32: use ages that float32 holds exactly.
    age = np.round(rng.uniform(20, 80, n) * 8) / 8
    sex = rng.choice(["M", "F"], n)
    X = 2.5 - 0.005 * age[:, None] * rng.normal(1, 0.2, n_features) + 0.1 * (sex == "M")[:, None]
    X = X + rng.normal(0, 0.2, (n, n_features))
    for k, s in enumerate(["siteA", "siteB", "siteC"]):
        X[site == s] = X[site == s] * (1 + 0.2 * k) + 0.1 * k * rng.normal(1, 0.5, n_features)
    return X, pd.DataFrame({"site": site, "age": age, "sex": sex})


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_matches_neurocombat_on_simulated_data(config):
    X, table = _simulated()
    expected = _run_neurocombat(X, table, ["sex"], ["age"], **config)
    got = ComBat(**config).fit_transform(X, sites=table["site"], covariates=table[["age", "sex"]])
    assert np.abs(got - expected).max() <= 1e-6 * X.std()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_matches_neurocombat_on_real_dk_thickness(config):
    data = pd.read_csv(DK_CSV)
    roi = [c for c in data.columns if c.endswith("_thickness")]
    X = data[roi].to_numpy(float)
    table = pd.DataFrame({"site": data["dataset"], "age": data["age"].astype(np.float32).astype(float),
                          "sex": data["sex"]})
    expected = _run_neurocombat(X, table, ["sex"], ["age"], **config)
    got = ComBat(**config).fit_transform(X, sites=table["site"], covariates=table[["age", "sex"]])
    assert np.abs(got - expected).max() <= 1e-6 * X.std()
    # and the site effect is really removed: the site means of the mean thickness get closer
    before = pd.Series(X.mean(axis=1)).groupby(table["site"]).mean().std()
    after = pd.Series(got.mean(axis=1)).groupby(table["site"]).mean().std()
    assert after < 0.5 * before


@pytest.mark.parametrize("config", [dict(), dict(eb=False), dict(parametric=False)], ids=["param", "no-eb", "nonparam"])
def test_reference_site_matches_neurocombat_with_its_numpy_crash_patched(config, monkeypatch):
    # neuroCombat's ref_batch calls np.int, removed in numpy 1.24: it crashes as shipped. Restoring the
    # alias for the duration of the test lets us compare the reference-site formulas themselves.
    monkeypatch.setattr(np, "int", int, raising=False)
    X, table = _simulated(seed=3, n_features=120)
    expected = _run_neurocombat(X, table, ["sex"], ["age"], ref_batch="siteB", **config)
    got = ComBat(reference_site="siteB", **config).fit_transform(X, sites=table["site"],
                                                                 covariates=table[["age", "sex"]])
    assert np.abs(got - expected).max() <= 1e-6 * X.std()
    assert np.array_equal(got[table["site"] == "siteB"], X[table["site"] == "siteB"])


def test_reference_site_against_the_formulas_without_eb():
    # Independent of neuroCombat: least squares on [site one-hot | covariates], the reference site's
    # coefficient as the grand mean, its residual variance as the pooled variance (ddof 0), and
    # site means / variances (ddof 1) of the standardised data as gamma / delta.
    X, table = _simulated(seed=4, n_features=40)
    sites = table["site"].to_numpy()
    D = np.column_stack([(sites == s).astype(float) for s in ["siteA", "siteB", "siteC"]]
                        + [table["age"].to_numpy(), (table["sex"] == "M").to_numpy(float)])
    B = np.linalg.lstsq(D, X, rcond=None)[0]
    ref = sites == "siteB"
    var = ((X - D @ B)[ref] ** 2).mean(axis=0)
    stand = B[1] + D[:, 3:] @ B[3:]
    s = (X - stand) / np.sqrt(var)
    expected = X.copy()
    for site in ["siteA", "siteC"]:
        rows = sites == site
        gamma, delta = s[rows].mean(axis=0), s[rows].var(axis=0, ddof=1)
        expected[rows] = (s[rows] - gamma) / np.sqrt(delta) * np.sqrt(var) + stand[rows]
    got = ComBat(reference_site="siteB", eb=False).fit_transform(X, sites=sites, covariates=table[["age", "sex"]])
    assert np.allclose(got, expected, rtol=0, atol=1e-10)
