"""Multivariate site metrics: kBET, iLISI, MANOVA (Pillai) and per-vertex covariance heterogeneity."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spherical_ops import icosphere
from surfharm.evaluate import metrics


def _data(shift=0.0, n_per_site=60, p=30, n_sites=3, seed=0):
    rng = np.random.default_rng(seed)
    sites = np.repeat([f"s{k}" for k in range(n_sites)], n_per_site)
    codes = np.repeat(np.arange(n_sites), n_per_site)
    age = rng.uniform(20, 80, sites.size)
    X = rng.normal(size=(sites.size, p)) + 0.05 * age[:, None]
    X += shift * rng.normal(size=(n_sites, p))[codes]
    return X, sites, pd.DataFrame({"age": age})


def test_kbet_is_near_alpha_without_site_effect_and_near_one_with_a_strong_one():
    X, sites, cov = _data()
    none = metrics.kbet(X, sites, cov)
    assert none["kbet_rejection"] < 0.2 and none["kbet_k"] == 15   # a quarter of the mean site size
    X, sites, cov = _data(shift=1.5)
    assert metrics.kbet(X, sites, cov)["kbet_rejection"] > 0.9


def test_kbet_ignores_a_covariate_that_differs_between_sites():
    X, sites, cov = _data()
    cov["age"] = cov["age"] + 30 * (sites == "s0")                     # older subjects at one site
    X = X + 0.05 * 30 * (sites == "s0")[:, None]                         # ... with their (kept) age effect
    adjusted = metrics.kbet(X, sites, cov)["kbet_rejection"]
    assert adjusted < 0.2
    assert metrics.kbet(X, sites, None)["kbet_rejection"] > adjusted + 0.1   # unadjusted, age looks like site


def test_ilisi_counts_the_sites_mixed_around_each_scan():
    X, sites, cov = _data()
    mixed = metrics.lisi(X, sites, cov)
    assert mixed["ilisi"] > 2.6 and mixed["ilisi_norm"] > 0.8             # 3 equal sites, well mixed
    X, sites, cov = _data(shift=3.0)
    apart = metrics.lisi(X, sites, cov)
    assert apart["ilisi"] < 1.2


def test_manova_pillai_matches_statsmodels_and_detects_a_site_effect():
    sm = pytest.importorskip("statsmodels.multivariate.manova")
    X, sites, cov = _data(shift=0.3)
    ours = metrics.manova_site(X, sites, cov, n_components=5)
    scores = metrics.pca_scores(X, cov, 5)
    frame = pd.DataFrame(scores, columns=[f"pc{i}" for i in range(5)]).assign(site=sites, age=cov["age"].to_numpy())
    test = sm.MANOVA.from_formula("pc0 + pc1 + pc2 + pc3 + pc4 ~ age + C(site)", frame).mv_test()
    row = test.results["C(site)"]["stat"].loc["Pillai's trace"]
    assert ours["manova_pillai"] == pytest.approx(float(row["Value"]), rel=1e-8)
    assert ours["manova_f"] == pytest.approx(float(row["F Value"]), rel=1e-8)
    assert ours["manova_p"] == pytest.approx(float(row["Pr > F"]), rel=1e-6)
    assert ours["manova_p"] < 1e-6
    X, sites, cov = _data()
    assert metrics.manova_site(X, sites, cov)["manova_p"] > 0.01


def test_covariance_heterogeneity_finds_the_vertices_where_local_covariance_differs():
    mesh = icosphere(2)
    V = mesh.vertices.shape[0]
    rng = np.random.default_rng(1)
    sites = np.repeat(["a", "b"], 80)
    X = rng.normal(size=(sites.size, V))
    region = mesh.vertices[:, 2] > 0.5                                   # a cap around the north pole
    shared = rng.normal(size=(sites.size, 1))
    X[:, region] += 1.5 * shared * (sites == "b")[:, None]               # site b: vertices there co-vary
    hoods = metrics.ring_neighbourhoods(mesh.faces, V)
    assert sorted({len(h) for h in hoods}) == [6, 7]                      # pentagons have 5 neighbours
    het = metrics.covariance_heterogeneity(X, sites, hoods)
    inside = np.array([region[h].all() for h in hoods])
    outside = np.array([not region[h].any() for h in hoods])
    assert np.all(het["p"][inside] < 1e-6)
    assert np.mean(het["p"][outside] < 0.05) < 0.15
    assert het["df"][0] == 6 * 7 / 2 and het["df"][20] == 7 * 8 / 2
    X[:, 3] = np.nan                                                      # the medial wall is skipped
    assert np.isnan(metrics.covariance_heterogeneity(X, sites, hoods)["p"][3])


def test_multivariate_site_metrics_for_the_benchmark():
    mesh = icosphere(2)
    X, sites, cov = _data(p=mesh.vertices.shape[0])
    out = metrics.multivariate_site_metrics(X, sites, cov, faces=mesh.faces)
    assert set(out) == {"kbet_rejection", "ilisi", "manova_pillai", "manova_p", "cov_het_frac"}
    assert out["cov_het_frac"] < 0.1 and out["kbet_rejection"] < 0.2


def test_covariance_heterogeneity_rendering(tmp_path):
    from surfharm.viz.covariance import covariance_heterogeneity_map, plot_covariance_heterogeneity

    mesh = icosphere(4)
    rng = np.random.default_rng(0)
    sites = np.repeat(["a", "b"], 30)
    maps = 2.5 + 0.1 * rng.normal(size=(sites.size, mesh.vertices.shape[0]))
    maps[:, 5] = np.nan
    cov = pd.DataFrame({"age": rng.uniform(20, 80, sites.size), "sex": rng.choice(["F", "M"], sites.size)})
    values = covariance_heterogeneity_map(maps, sites, cov)
    assert values.shape == (mesh.vertices.shape[0],) and np.isnan(values[5]) and np.nanmin(values) >= 0
    pytest.importorskip("pyvista")
    plot_covariance_heterogeneity(maps, sites, maps, cov, screenshot=tmp_path / "cov.png")
    assert (tmp_path / "cov.png").stat().st_size > 1000
