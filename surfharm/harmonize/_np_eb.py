"""Non-parametric empirical Bayes for ComBat, exact and fast.

For a feature with ``n`` scans of mean ``m`` and biased variance ``v`` at one site (standardised
units), each other feature k is a prior point (gamma_k, delta_k) weighted by the likelihood of the
feature's data under N(gamma_k, delta_k):

    log w_k(m, v) = -n/2 * [log(2 pi delta_k) + (v + (m - gamma_k)^2) / delta_k]

(``sum_j (s_j - gamma_k)^2 = n (v + (m - gamma_k)^2)`` exactly), and the posterior estimates are
the weighted means ``gamma* = sum_k w_k gamma_k / sum_k w_k``, likewise ``delta*``; the feature's own
point is left out. Done literally this is (features x features) exponentials: 2.7e10 per site at
163842 vertices.

:func:`direct` evaluates those sums exactly, in blocks, each row shifted by its maximum so that no
weight underflows.

:func:`interpolated` uses that, for the features of a site with complete data (same ``n``), the
sums are smooth functions of just two numbers, the feature's (m, log v). Their logarithms
``log F_h(m, log v) = log sum_k w_k(m, v) h_k`` (h = 1, gamma - c > 0, delta) are computed EXACTLY
(sums over every prior point) at a P x Q tensor grid of Chebyshev nodes spanning the features, and
interpolated from there to every feature (a matrix product). The feature's own point is then
removed exactly, and the result is checked against :func:`direct` on a probe of features (random,
plus the most extreme ones); the grid is refined until the probe agrees to ``tol``. Features outside
the grid's box (the 0.1 % most extreme at each end), with another ``n`` (missing values), or whose
own point carries most of the weight, are summed exactly. Cost: P Q x prior points exponentials plus
features x P x Q multiply-adds, instead of features x prior points exponentials.
"""
from __future__ import annotations

import math

import numpy as np

#: Fraction of features, at each end of m and of log v, left out of the grid's box (summed exactly).
TAIL = 1e-3
PROBE_SIZE = 256
FIRST_GRID = 12


def direct(n, mean, var_biased, prior_gamma, prior_delta, self_index):
    """Exact weighted means for every feature. Arrays: (n_features,) and (n_prior,).

    ``self_index``: (n_features,) position of each feature among the prior points, or -1.
    Returns ``(gamma_star, delta_star)``.
    """
    sums, _ = _weighted_sums(n, mean, var_biased, prior_gamma, prior_delta, self_index)
    return sums[:, 1] / sums[:, 0], sums[:, 2] / sums[:, 0]


def _weighted_sums(n, mean, var_biased, prior_gamma, prior_delta, self_index, *, block_bytes=32 * 2**20):
    """``(sums, shift)``: sums (rows, 3) of exp(log w - shift) x [1, gamma, delta]; shift (rows,) = row max."""
    import torch

    n_rows, n_prior = mean.shape[0], prior_gamma.shape[0]
    g = torch.as_tensor(prior_gamma, dtype=torch.float64)
    d = torch.as_tensor(prior_delta, dtype=torch.float64)
    # log w = n * e_k + (n m) * b_k + n (v + m^2) * c_k: a rank-3 product, one matrix multiply per block.
    prior_terms = torch.stack([-0.5 * torch.log(2 * math.pi * d) - g * g / (2 * d), g / d, -0.5 / d])
    values = torch.stack([torch.ones_like(g), g, d], dim=1)
    sums = np.empty((n_rows, 3))
    shift = np.empty(n_rows)
    rows = max(1, int(block_bytes // (8 * max(n_prior, 1))))
    for start in range(0, n_rows, rows):
        stop = min(n_rows, start + rows)
        nn = np.asarray(n[start:stop], dtype=float)
        mm = np.asarray(mean[start:stop], dtype=float)
        query = torch.as_tensor(np.stack([nn, nn * mm, nn * (var_biased[start:stop] + mm * mm)], axis=1))
        logw = query @ prior_terms
        own = self_index[start:stop]
        has_own = np.flatnonzero(own >= 0)
        if has_own.size:
            logw[torch.as_tensor(has_own), torch.as_tensor(own[has_own])] = -math.inf
        top = logw.max(dim=1, keepdim=True).values
        logw.sub_(top).exp_()
        sums[start:stop] = (logw @ values).numpy()
        shift[start:stop] = top[:, 0].numpy()
    return sums, shift


def interpolated(n, mean, var_biased, prior_gamma, prior_delta, self_index, *, tol=1e-9, seed=0,
                 min_speedup=8.0):
    """Same result as :func:`direct` to ``tol`` (absolute, standardised units, checked on a probe).

    The grid grows (x1.5 per side) until the probe agrees, while it has ``min_speedup`` times fewer
    nodes than there are prior points; past that the exact sum is used. Returns
    ``(gamma_star, delta_star, info)``; ``info``: method, grid shape, probe error, rows summed exactly.
    """
    n = np.asarray(n, dtype=float)
    n_prior = prior_gamma.size
    n_common = float(np.bincount(n.astype(np.int64)).argmax())
    log_v = np.log(np.maximum(var_biased, 1e-300))
    same_n = n == n_common
    m_lo, m_hi = np.quantile(mean[same_n], [TAIL, 1 - TAIL])
    t_lo, t_hi = np.quantile(log_v[same_n], [TAIL, 1 - TAIL])
    on_grid = same_n & (mean >= m_lo) & (mean <= m_hi) & (log_v >= t_lo) & (log_v <= t_hi) & (var_biased > 0)
    grid_rows = np.flatnonzero(on_grid)
    rng = np.random.default_rng(seed)
    probe = rng.choice(grid_rows, size=min(PROBE_SIZE, grid_rows.size), replace=False)
    extremes = [np.argmin(mean[grid_rows]), np.argmax(mean[grid_rows]), np.argmin(log_v[grid_rows]),
                np.argmax(log_v[grid_rows])]
    probe = np.unique(np.concatenate([probe, grid_rows[extremes]]))
    exact = direct(n[probe], mean[probe], var_biased[probe], prior_gamma, prior_delta, self_index[probe])
    offset = prior_gamma.min() - 1.0   # gamma - offset >= 1 > 0, so its weighted sum has a logarithm
    p = q = FIRST_GRID
    while p * q * min_speedup <= n_prior:
        gamma_star, delta_star, fragile = _on_grid(n_common, mean, log_v, prior_gamma, prior_delta, self_index,
                                                   grid_rows, (m_lo, m_hi, t_lo, t_hi), p, q, offset)
        position = np.searchsorted(grid_rows, probe)
        error = max(np.abs(gamma_star[position] - exact[0]).max(), np.abs(delta_star[position] - exact[1]).max())
        if error <= tol:
            exact_rows = np.union1d(np.flatnonzero(~on_grid), grid_rows[fragile])
            out_g = np.empty(mean.size)
            out_d = np.empty(mean.size)
            out_g[grid_rows], out_d[grid_rows] = gamma_star, delta_star
            if exact_rows.size:
                out_g[exact_rows], out_d[exact_rows] = direct(n[exact_rows], mean[exact_rows], var_biased[exact_rows],
                                                              prior_gamma, prior_delta, self_index[exact_rows])
            return out_g, out_d, {"method": "interpolated", "grid": (p, q), "probe_error": float(error),
                                  "exact_rows": int(exact_rows.size)}
        p, q = int(p * 1.5) + 1, int(q * 1.5) + 1
    gamma_star, delta_star = direct(n, mean, var_biased, prior_gamma, prior_delta, self_index)
    return gamma_star, delta_star, {"method": "direct", "grid": None, "probe_error": 0.0, "exact_rows": mean.size}


def _on_grid(n_common, mean, log_v, prior_gamma, prior_delta, self_index, rows, box, p, q, offset):
    """Interpolated leave-one-out weighted means for ``rows``; also the rows to sum exactly (fragile)."""
    m_lo, m_hi, t_lo, t_hi = box
    node_m, basis_m = _chebyshev_nodes(m_lo, m_hi, p, mean[rows])
    node_t, basis_t = _chebyshev_nodes(t_lo, t_hi, q, log_v[rows])
    grid_m = np.repeat(node_m, q)
    grid_v = np.exp(np.tile(node_t, p))
    sums, shift = _weighted_sums(np.full(p * q, n_common), grid_m, grid_v, prior_gamma, prior_delta,
                                 np.full(p * q, -1))
    positive = np.stack([sums[:, 0], sums[:, 1] - offset * sums[:, 0], sums[:, 2]], axis=1)
    log_sums = (np.log(positive) + shift[:, None]).reshape(p, q, 3)
    # value at (m_i, t_i) = sum_ab L_a(m_i) Z[a, b] L_b(t_i), for the three sums
    log_f = np.stack([np.einsum("ib,ib->i", basis_m @ log_sums[..., h], basis_t) for h in range(3)], axis=1)
    # leave the feature's own point out: its weight relative to the total
    own = self_index[rows]
    share = np.zeros(rows.size)
    has_own = own >= 0
    k = own[has_own]
    m, v = mean[rows][has_own], np.exp(log_v[rows][has_own])
    log_own = -0.5 * n_common * (np.log(2 * math.pi * prior_delta[k]) + (v + (m - prior_gamma[k]) ** 2) / prior_delta[k])
    share[has_own] = np.exp(log_own - log_f[has_own, 0])
    own_g = np.zeros(rows.size)
    own_d = np.zeros(rows.size)
    own_g[has_own], own_d[has_own] = prior_gamma[k] - offset, prior_delta[k]
    rest = 1.0 - share
    gamma_star = (np.exp(log_f[:, 1] - log_f[:, 0]) - share * own_g) / rest + offset
    delta_star = (np.exp(log_f[:, 2] - log_f[:, 0]) - share * own_d) / rest
    # where the own point carries most of the weight, the subtraction loses digits
    fragile = np.flatnonzero(share > 0.5)
    return gamma_star, delta_star, fragile


def _chebyshev_nodes(lo: float, hi: float, k: int, x: np.ndarray):
    """Chebyshev points of the first kind on [lo, hi] and the Lagrange basis at ``x``: (k,), (len(x), k)."""
    theta = np.pi * (2 * np.arange(k) + 1) / (2 * k)
    nodes = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(theta)
    weights = (-1.0) ** np.arange(k) * np.sin(theta)
    diff = x[:, None] - nodes[None, :]
    exact = diff == 0
    diff[exact] = 1.0
    terms = weights / diff
    basis = terms / terms.sum(axis=1, keepdims=True)
    rows = np.flatnonzero(exact.any(axis=1))
    basis[rows] = exact[rows].astype(float)
    return nodes, basis
