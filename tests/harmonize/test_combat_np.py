"""Non-parametric empirical Bayes: the exact blocked sum against a plain loop, the fast grid against both."""
import numpy as np

from surfharm.harmonize import ComBat, _np_eb


def test_fast_nonparametric_agrees_with_direct_sum():
    # The Chebyshev evaluation of the non-parametric prior must give the exact sum's answer.
    rng = np.random.default_rng(0)
    n_features = 12000
    n = np.full(n_features, 40.0)
    n[:50] = 37.0  # some features with missing scans
    mean = rng.normal(0.2, 0.3, n_features)
    mean[:3] = [4.0, -3.0, 2.5]  # outlying features
    var = rng.gamma(40, 1 / 40, n_features)
    prior_g, prior_d = mean[::2].copy(), var[::2] * 40 / 39
    self_index = np.full(n_features, -1)
    self_index[::2] = np.arange(prior_g.size)
    exact = _np_eb.direct(n, mean, var, prior_g, prior_d, self_index)
    gamma, delta, info = _np_eb.interpolated(n, mean, var, prior_g, prior_d, self_index, tol=1e-9,
                                          min_speedup=1.0)
    assert info["method"] == "interpolated"
    assert np.abs(gamma - exact[0]).max() < 1e-8
    assert np.abs(delta - exact[1]).max() < 1e-8


def test_direct_nonparametric_against_a_plain_loop():
    rng = np.random.default_rng(5)
    data = rng.normal(0.1, 1.1, (25, 30))  # 25 features x 30 scans of one site
    g_hat, d_hat = data.mean(axis=1), data.var(axis=1, ddof=1)
    expected = []
    for i in range(25):
        others = np.arange(25) != i
        g, d = g_hat[others], d_hat[others]
        lik = np.array([np.prod(np.exp(-(data[i] - gk) ** 2 / (2 * dk)) / np.sqrt(2 * np.pi * dk))
                        for gk, dk in zip(g, d)])
        expected.append(((g * lik).sum() / lik.sum(), (d * lik).sum() / lik.sum()))
    got = _np_eb.direct(np.full(25, 30.0), data.mean(axis=1), data.var(axis=1), g_hat, d_hat, np.arange(25))
    assert np.allclose(np.stack(got, axis=1), np.array(expected), rtol=1e-10, atol=0)


def test_combat_uses_the_grid_beyond_the_direct_limit(monkeypatch):
    import surfharm.harmonize.combat as combat_module

    rng = np.random.default_rng(2)
    sites = np.repeat(["a", "b"], 25)
    X = rng.normal(0, 1, (50, 3000)) * rng.gamma(30, 1 / 30, 3000) + rng.normal(0, 0.3, 3000)
    X[sites == "b"] = X[sites == "b"] * 1.3 + 0.2
    exact = ComBat(parametric=False).fit(X, sites=sites)
    monkeypatch.setattr(combat_module, "DIRECT_NONPARAMETRIC_MAX", 100)
    monkeypatch.setattr(_np_eb, "interpolated", _grid_always(_np_eb.interpolated))
    fast = ComBat(parametric=False).fit(X, sites=sites)
    assert [info["method"] for info in fast.nonparametric_info_] == ["interpolated", "interpolated"]
    assert np.abs(fast.gamma_star_ - exact.gamma_star_).max() < 1e-8
    assert np.abs(fast.delta_star_ - exact.delta_star_).max() < 1e-8


def _grid_always(function):
    # at this small size the grid is not cheaper than the exact sum: force it for the test
    def wrapped(*args, **kwargs):
        return function(*args, min_speedup=0.1, **kwargs)
    return wrapped
