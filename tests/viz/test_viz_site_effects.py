"""Per-vertex site summaries checked against independent references (scipy, pandas, per-vertex lstsq)."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from surfharm.viz.mesh import MeshError
from surfharm.viz.site_effects import site_deviation_maps, site_effect_map, site_mean_maps


@pytest.fixture
def cohort():
    rng = np.random.default_rng(3)
    sites = np.repeat(np.array(["s1", "s2", "s3"]), [12, 9, 15])
    age = rng.uniform(20, 80, sites.size)
    maps = rng.normal(2.5, 0.2, (sites.size, 40)) - 0.01 * age[:, None]
    maps[sites == "s2", :15] += 0.6  # a site effect on the first 15 vertices
    maps[:, 38] = np.nan  # medial wall
    maps[4, 37] = np.nan  # one missing value
    return maps, sites, age


def test_site_test_without_covariates_is_one_way_anova(cohort):
    maps, sites, _ = cohort
    got = site_effect_map(maps, sites)
    for v in range(maps.shape[1]):
        groups = [maps[sites == s, v] for s in ("s1", "s2", "s3")]
        groups = [g[np.isfinite(g)] for g in groups]
        if v == 38:
            assert np.isnan(got[v])
            continue
        expected = -np.log10(stats.f_oneway(*groups).pvalue)
        assert got[v] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert got[:15].mean() > 3 * got[15:37].mean()  # the planted effect stands out


def test_site_test_with_covariates_matches_a_per_vertex_linear_model(cohort):
    maps, sites, age = cohort
    sex = np.where(np.arange(sites.size) % 2, "F", "M")
    covs = pd.DataFrame({"age": age, "sex": sex})
    got = site_effect_map(maps, sites, covs)
    reduced = np.column_stack([np.ones(sites.size), age, sex == "M"])
    full = np.column_stack([reduced, sites == "s2", sites == "s3"])
    for v in (0, 20, 37):
        rows = np.isfinite(maps[:, v])
        y = maps[rows, v]
        rss = [np.sum((y - X[rows] @ np.linalg.lstsq(X[rows], y, rcond=None)[0]) ** 2) for X in (reduced, full)]
        df2 = rows.sum() - full.shape[1]
        f = ((rss[0] - rss[1]) / 2) / (rss[1] / df2)
        assert got[v] == pytest.approx(-np.log10(stats.f.sf(f, 2, df2)), rel=1e-8)


def test_site_means_and_deviations(cohort):
    maps, sites, _ = cohort
    order, means = site_mean_maps(maps, sites)
    assert order == ["s1", "s2", "s3"]
    expected = pd.DataFrame(maps).groupby(sites).mean()  # pandas skips NaN
    np.testing.assert_allclose(means, expected.to_numpy(), equal_nan=True)
    _, dev = site_deviation_maps(maps, sites)
    np.testing.assert_allclose(np.nansum(dev[:, :38], axis=0), 0.0, atol=1e-12)
    assert np.isnan(dev[:, 38]).all()


def test_site_test_errors(cohort):
    maps, sites, _ = cohort
    with pytest.raises(MeshError, match="at least two sites"):
        site_effect_map(maps, np.full(sites.size, "one"))
    with pytest.raises(MeshError, match="35 labels but maps has 36 scans"):
        site_effect_map(maps, sites[:-1])
    with pytest.raises(MeshError, match="missing values in column"):
        site_effect_map(maps, sites, pd.DataFrame({"age": np.full(sites.size, np.nan)}))


def test_adjusted_site_effects_separate_site_from_age():
    """Site B scans only older subjects: its raw mean mixes age and site; adjusted, only the site is left."""
    rng = np.random.default_rng(11)
    sites = np.repeat(np.array(["A", "B"]), 40)
    age = np.where(sites == "A", rng.uniform(20, 50, 80), rng.uniform(50, 80, 80))
    site_offset = np.where(sites == "B", 0.1, 0.0)
    maps = 3.0 - 0.01 * age[:, None] + site_offset[:, None] + rng.normal(0, 0.02, (80, 30))
    maps[:, 29] = np.nan
    maps[0, 28] = np.nan
    _, raw = site_deviation_maps(maps, sites)
    _, adjusted = site_deviation_maps(maps, sites, pd.DataFrame({"age": age}))
    # B - A: raw = 0.1 - 0.01 * (age gap of ~30 years) = about -0.2; adjusted = 0.1
    assert np.nanmean(raw[1] - raw[0]) == pytest.approx(-0.2, abs=0.05)
    gap = adjusted[1, :29] - adjusted[0, :29]
    assert gap.mean() == pytest.approx(0.1, abs=0.01)  # age and site are nearly collinear: noisy per vertex
    np.testing.assert_allclose(gap, 0.1, atol=0.05)
    assert np.isnan(adjusted[:, 29]).all()
    # vertex 28 (one scan missing) equals an explicit per-vertex fit
    rows = np.isfinite(maps[:, 28])
    design = np.column_stack([sites[rows] == "A", sites[rows] == "B", age[rows] - age.mean()]).astype(float)
    coef = np.linalg.lstsq(design, maps[rows, 28], rcond=None)[0]
    assert adjusted[1, 28] - adjusted[0, 28] == pytest.approx(coef[1] - coef[0], rel=1e-6)
