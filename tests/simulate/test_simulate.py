"""Simulation: reproducible, realistic amplitudes, site effects as configured, traveling subjects."""
from dataclasses import replace

import numpy as np
import pytest

from surfharm.simulate import SiteEffect, SiteSpec, SimulationConfig, preset, simulate_cohort
from surfharm.simulate.anatomy import fsaverage5_thickness, infant_growth
from surfharm.simulate.fields import gaussian_smoother, smooth_random_fields
from spherical_ops import icosphere


def small(**overrides):
    return preset("quick", n_per_site=12, n_traveling=3, **overrides)


@pytest.fixture(scope="module")
def sim():
    return simulate_cohort(small())


def test_same_seed_same_cohort_other_seed_differs(sim):
    again = simulate_cohort(small())
    np.testing.assert_array_equal(again.maps, sim.maps)
    other = simulate_cohort(small(seed=1))
    assert not np.allclose(np.nan_to_num(other.maps), np.nan_to_num(sim.maps))


def test_site_fields_do_not_depend_on_cohort_size(sim):
    bigger = simulate_cohort(preset("quick", n_per_site=20, n_traveling=3))
    np.testing.assert_array_equal(bigger.site_maps["A"].additive, sim.site_maps["A"].additive)


def test_shapes_mask_and_table(sim):
    n = len(sim.table)
    assert sim.maps.shape == sim.truth.shape == (n, 2562)
    assert sim.maps.dtype == np.float32
    # Medial wall is NaN in every scan, cortex never.
    assert np.isnan(sim.maps[:, ~sim.mask]).all() and np.isfinite(sim.maps[:, sim.mask]).all()
    assert 0.85 < sim.mask.mean() < 0.95
    assert {"subject", "session", "site", "age", "sex", "female", "traveling"} <= set(sim.table.columns)
    assert not sim.table.duplicated(["subject", "session"]).any()


def test_base_anatomy_is_nilearn_fsaverage5(sim):
    base = fsaverage5_thickness("left")[:2562]
    mean_truth = sim.truth[~sim.traveling][:, sim.mask].mean(axis=0)
    r = np.corrcoef(mean_truth, base[sim.mask])[0, 1]
    assert r > 0.9


def test_inter_subject_sd_is_realistic(sim):
    sd = np.nanstd(sim.truth[~sim.traveling][:, sim.mask], axis=0)
    assert 0.18 < np.mean(sd) < 0.35


def test_traveling_subjects_share_truth_across_sites(sim):
    index = sim.traveling_index
    assert index.shape == (3, 3)
    rows = index.iloc[0].to_numpy()
    truth = sim.truth[rows][:, sim.mask]
    np.testing.assert_allclose(truth[0], truth[1])
    assert not np.allclose(sim.maps[rows[0]][sim.mask], sim.maps[rows[1]][sim.mask])


def test_additive_effect_shifts_site_mean_by_configured_amount():
    effect_a = SiteEffect(additive_mean=0.3, noise_sd_mm=0.0)
    effect_b = SiteEffect(noise_sd_mm=0.0)
    cfg = SimulationConfig(level=4, sites=(SiteSpec("A", 5, effect_a), SiteSpec("B", 5, effect_b)), n_traveling=0)
    sim = simulate_cohort(cfg)
    diff = sim.maps - sim.truth
    a = sim.table["site"].to_numpy() == "A"
    np.testing.assert_allclose(np.nanmean(diff[a]), 0.3, atol=1e-5)
    np.testing.assert_allclose(np.nanmean(diff[~a]), 0.0, atol=1e-5)


def test_saturation_compresses_thick_cortex_more():
    effect = SiteEffect(saturation_mm=3.0, noise_sd_mm=0.0)
    cfg = SimulationConfig(level=4, sites=(SiteSpec("A", 4, effect), SiteSpec("B", 4)), n_traveling=0)
    sim = simulate_cohort(cfg)
    a = (sim.table["site"] == "A").to_numpy()
    t, y = sim.truth[a][:, sim.mask].ravel(), sim.maps[a][:, sim.mask].ravel()
    np.testing.assert_allclose(y, 3.0 * np.tanh(t / 3.0), atol=1e-5)
    assert (t - y)[t > 3].mean() > (t - y)[(t > 1) & (t < 2)].mean()


def test_extra_smoothing_reduces_fine_detail():
    effect = SiteEffect(smoothing_fwhm_mm=15.0, noise_sd_mm=0.0)
    cfg = SimulationConfig(level=4, sites=(SiteSpec("A", 6, effect), SiteSpec("B", 6)), n_traveling=0)
    sim = simulate_cohort(cfg)
    a = (sim.table["site"] == "A").to_numpy()
    spatial_sd = lambda m: np.nanstd(m[:, sim.mask], axis=1).mean()  # noqa: E731
    assert spatial_sd(sim.maps[a]) < 0.9 * spatial_sd(sim.truth[a])


@pytest.mark.parametrize("level", [4, 6])
def test_truth_at_site_is_what_that_site_acquires(level):
    blurred = SiteEffect(additive_mean=0.2, saturation_mm=3.5, smoothing_fwhm_mm=10.0, noise_sd_mm=0.0)
    cfg = SimulationConfig(level=level, sites=(SiteSpec("A", 4, SiteEffect(noise_sd_mm=0.0)),
                                               SiteSpec("B", 4, blurred)),
                           n_traveling=0)
    sim = simulate_cohort(cfg)
    b = (sim.table["site"] == "B").to_numpy()
    at_b = sim.truth_at_site("B")
    assert at_b.shape == sim.maps.shape and np.isnan(at_b[:, ~sim.mask]).all()
    # Without scan noise, B's own scans are reproduced; A's scans get B's blur and offset.
    np.testing.assert_allclose(at_b[b][:, sim.mask], sim.maps[b][:, sim.mask], atol=1e-4)
    spatial_sd = lambda m: np.nanstd(m[:, sim.mask], axis=1).mean()  # noqa: E731
    assert spatial_sd(at_b[~b]) < 0.9 * spatial_sd(sim.maps[~b])
    np.testing.assert_allclose(np.nanmean(sim.truth_at_site("A")[~b] - sim.maps[~b]), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="site 'C' is not in this simulation"):
        sim.truth_at_site("C")


def test_age_confound_moves_one_site_older():
    sim = simulate_cohort(preset("adult-confounded", level=3, n_per_site=15, n_traveling=0))
    ages = sim.table.groupby("site")["age"].mean()
    assert ages["B"] > 65 and ages.drop("B").max() < 60


def test_infant_growth_curve_shape():
    tau = np.full(1, 4.5)
    g = infant_growth(np.array([0.0, 12.0, 24.0]), tau)[:, 0]
    assert g[2] == pytest.approx(1.0)
    assert 1.25 < g[1] / g[0] < 1.45          # steep first year
    assert 1.0 < g[2] / g[1] < 1.05           # flat second year


def test_infant_longitudinal_with_scanner_change():
    sim = simulate_cohort(preset("infant", level=3, n_per_site=10, n_traveling=2))
    study = sim.table[~sim.traveling]
    assert (study.groupby("subject").size() == 3).all()
    assert set(sim.table["site"]) == {"A", "A2", "B", "C"}
    # A2 scans come after the change: later dates than every A scan.
    assert study.loc[study.site == "A2", "scan_date"].min() >= study.loc[study.site == "A", "scan_date"].max()
    # Thickness grows with age (mean over cortex).
    young, old = study["age_months"] < 4, study["age_months"] > 15
    means = sim.truth[~sim.traveling][:, sim.mask].mean(axis=1)
    assert means[old.to_numpy()].mean() > 1.1 * means[young.to_numpy()].mean()


def test_upsampled_level_6():
    sim = simulate_cohort(preset("quick", level=6, n_per_site=3, n_traveling=0))
    assert sim.maps.shape[1] == 40962
    assert np.isfinite(sim.maps[:, sim.mask]).all()


def test_random_fields_have_unit_sd():
    sphere = icosphere(4)
    fields = smooth_random_fields(gaussian_smoother(sphere.vertices, 30.0), 400, np.random.default_rng(0))
    assert fields.std(axis=0).mean() == pytest.approx(1.0, abs=0.05)
    # Smooth: neighbouring vertices (first vertex and its nearest) strongly correlated.
    d = np.linalg.norm(sphere.vertices - sphere.vertices[0], axis=1)
    nearest = np.argsort(d)[1]
    assert np.corrcoef(fields[:, 0], fields[:, nearest])[0, 1] > 0.7
    opposite = np.argmax(d)
    assert abs(np.corrcoef(fields[:, 0], fields[:, opposite])[0, 1]) < 0.2


@pytest.mark.parametrize("bad, message", [
    (dict(sites=()), "at least 2 sites"),
    (dict(mode="child"), "mode"),
    (dict(level=2), "level"),
])
def test_bad_config_names_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        simulate_cohort(replace(small(), **bad))


def test_bad_site_effect_names_site():
    cfg = small()
    sites = (SiteSpec("A", 5, SiteEffect(noise_sd_mm=-1)), *cfg.sites[1:])
    with pytest.raises(ValueError, match="site 'A'.*noise_sd_mm"):
        simulate_cohort(replace(cfg, sites=sites))


def test_config_round_trip_through_dict():
    cfg = preset("infant", level=3)
    assert SimulationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown simulation option"):
        SimulationConfig.from_dict({"n_subjects": 3})


def test_to_cohort(sim):
    cohort = sim.to_cohort()
    assert cohort.maps.shape == sim.maps.shape
    assert list(cohort.sites) == list(sim.table["site"])
