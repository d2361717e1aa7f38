"""The adult-covariance scenario: sites differ by a low-rank smooth random component of their own size."""
from __future__ import annotations

import numpy as np

from surfharm.evaluate import metrics
from surfharm.evaluate.scenarios import available_scenarios
from surfharm.simulate import presets, simulate_cohort


def test_covariance_component_has_each_sites_size_and_leaves_other_presets_alone():
    assert "adult-covariance" in available_scenarios()
    sim = simulate_cohort(presets.adult_covariance(level=3, n_per_site=25, n_traveling=0))
    plain = simulate_cohort(presets.adult(level=3, n_per_site=25, n_traveling=0))
    for name in "ABCD":
        np.testing.assert_array_equal(sim.site_maps[name].additive, plain.site_maps[name].additive)
        assert plain.site_maps[name].components is None and sim.site_maps[name].components.shape[0] == 3
    np.testing.assert_array_equal(sim.truth, plain.truth)
    # Variance of each site's scans along its own component fields grows with the configured SD.
    live = sim.mask
    spread = []
    for name in "ABCD":
        rows = sim.table["site"].to_numpy() == name
        fields = sim.site_maps[name].components[:, live]
        resid = sim.maps[rows][:, live] - sim.truth[rows][:, live]
        coef = np.linalg.lstsq(fields.T, (resid - resid.mean(axis=0)).T, rcond=None)[0]
        spread.append(float(coef.std()))
    np.testing.assert_allclose(spread, [0.04, 0.12, 0.08, 0.16], rtol=0.35)
    # Covariance heterogeneity is found in the raw maps.
    from spherical_ops import icosphere

    cov = sim.table[["age", "female"]]
    out = metrics.multivariate_site_metrics(sim.maps, sim.table["site"].to_numpy(), cov, faces=icosphere(3).faces)
    assert out["cov_het_frac"] > 0.5
