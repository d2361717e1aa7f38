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

:func:`interpolated` uses that, for every feature, ``w`` is a smooth function of the prior
point written as (gamma, log delta): it interpolates it on a p x q tensor grid of Chebyshev nodes
spanning the prior points, so that

    sum_k w(gamma_k, s_k) h_k  ~=  sum_ab w(gamma_a, s_b) M_h[a, b],   M_h[a, b] = sum_k L_a(gamma_k) L_b(s_k) h_k

with the moments ``M_h`` computed once per site: cost (features x p x q) instead of features^2 (the
degrees follow from the narrowest likelihood across the box). The prior points outside the box
(the 0.2 % most extreme at each end of gamma and of log delta) are summed exactly, the own point is
subtracted exactly, features whose estimates lie far outside the box or whose own point carries
most of the weight are summed exactly, and the result is checked against :func:`direct` on a probe
of features (random, plus the most extreme ones); the grid is refined until the probe agrees to
``tol`` (else the exact sum is used).
"""
from __future__ import annotations

import math

import numpy as np

#: Fraction of prior points, at each end of gamma and of log delta, summed exactly outside the grid.
TAIL = 2e-3
PROBE_SIZE = 256


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


def interpolated(n, mean, var_biased, prior_gamma, prior_delta, self_index, *, tol=1e-10, seed=0,
                 min_speedup=3.0):
    """Same result as :func:`direct` to ``tol`` (absolute, standardised units, checked on a probe).

    The grid grows (x1.15 per side) until the probe agrees, while it has ``min_speedup`` times fewer
    nodes than there are prior points; past that the exact sum is used. Returns
    ``(gamma_star, delta_star, info)``; ``info``: method, grid shape, probe error, rows summed exactly.
    """
    n = np.asarray(n, dtype=float)
    n_prior = prior_gamma.size
    log_d = np.log(prior_delta)
    g_lo, g_hi = np.quantile(prior_gamma, [TAIL, 1 - TAIL])
    s_lo, s_hi = np.quantile(log_d, [TAIL, 1 - TAIL])
    inside = (prior_gamma >= g_lo) & (prior_gamma <= g_hi) & (log_d >= s_lo) & (log_d <= s_hi)
    # A feature whose own estimates lie well outside the box sees a steep tail of the likelihood
    # over the grid, which polynomials fit poorly: such (few) features are summed exactly.
    log_v = np.log(np.maximum(var_biased, 1e-300))
    margin_g = 4.0 * np.sqrt(np.maximum(var_biased, 1e-12) / n)
    margin_s = 4.0 * np.sqrt(2.0 / n)
    outlying = ((mean < g_lo - margin_g) | (mean > g_hi + margin_g)
                | (log_v < s_lo - margin_s) | (log_v > s_hi + margin_s))
    grid_rows = np.flatnonzero(~outlying)
    # Degrees from the narrowest likelihood over the box: Gaussian in gamma of sd sqrt(delta/n),
    # about Gaussian in log delta of sd sqrt(2/n). Chebyshev interpolation of a Gaussian of sd sigma
    # on an interval of width W reaches ~1e-9 of its peak with about 3 W / sigma nodes; start a little
    # below and let the probe decide.
    n_max = float(n.max())
    p = int(np.ceil(2.5 * (g_hi - g_lo) / math.sqrt(math.exp(s_lo) / n_max))) + 4
    q = int(np.ceil(2.5 * (s_hi - s_lo) / math.sqrt(2.0 / n_max))) + 4
    rng = np.random.default_rng(seed)
    probe = rng.choice(grid_rows, size=min(PROBE_SIZE, grid_rows.size), replace=False)
    extremes = [np.argmin(mean[grid_rows]), np.argmax(mean[grid_rows]), np.argmin(log_v[grid_rows]),
                np.argmax(log_v[grid_rows])]
    probe = np.unique(np.concatenate([probe, grid_rows[extremes]]))
    exact = direct(n[probe], mean[probe], var_biased[probe], prior_gamma, prior_delta, self_index[probe])
    box = (g_lo, g_hi, s_lo, s_hi)
    while p * q * min_speedup <= n_prior:
        # the probe alone first: a grid too coarse costs little
        sums = _prior_grid_sums(n[probe], mean[probe], var_biased[probe], prior_gamma, prior_delta,
                                self_index[probe], inside, box, p, q)
        ok = sums[:, 0] > 1e-200
        with np.errstate(invalid="ignore", divide="ignore"):
            error = max(np.abs(sums[ok, 1] / sums[ok, 0] - exact[0][ok]).max(initial=0.0),
                        np.abs(sums[ok, 2] / sums[ok, 0] - exact[1][ok]).max(initial=0.0))
        if error > tol:
            p, q = int(p * 1.15) + 1, int(q * 1.15) + 1
            continue
        sums = _prior_grid_sums(n[grid_rows], mean[grid_rows], var_biased[grid_rows], prior_gamma, prior_delta,
                                self_index[grid_rows], inside, box, p, q)
        with np.errstate(invalid="ignore", divide="ignore"):
            gamma_star, delta_star = sums[:, 1] / sums[:, 0], sums[:, 2] / sums[:, 0]
        # rows whose weights underflowed against the bound, or whose own point dominated: exact sums
        fragile = grid_rows[~(sums[:, 0] > 1e-200)]
        exact_rows = np.union1d(np.flatnonzero(outlying), fragile)
        out_g, out_d = np.empty(mean.size), np.empty(mean.size)
        out_g[grid_rows], out_d[grid_rows] = gamma_star, delta_star
        if exact_rows.size:
            out_g[exact_rows], out_d[exact_rows] = direct(n[exact_rows], mean[exact_rows], var_biased[exact_rows],
                                                          prior_gamma, prior_delta, self_index[exact_rows])
        return out_g, out_d, {"method": "interpolated", "grid": (p, q), "probe_error": float(error),
                              "exact_rows": int(exact_rows.size)}
    gamma_star, delta_star = direct(n, mean, var_biased, prior_gamma, prior_delta, self_index)
    return gamma_star, delta_star, {"method": "direct", "grid": None, "probe_error": 0.0, "exact_rows": mean.size}


def _prior_grid_sums(n, mean, var_biased, prior_gamma, prior_delta, self_index, inside, box, p, q,
                     block_bytes=16 * 2**20):
    """(rows, 3) leave-one-out sums of w x [1, gamma, delta], scaled by exp(-bound) per row.

    Prior points inside ``box`` enter through the Chebyshev grid's moments, the others exactly.
    Rows whose own point carries over half the weight get 0 (flagged for an exact sum).
    """
    import torch

    g_lo, g_hi, s_lo, s_hi = box
    node_g, basis_g = _chebyshev_nodes(g_lo, g_hi, p, prior_gamma[inside])
    node_s, basis_s = _chebyshev_nodes(s_lo, s_hi, q, np.log(prior_delta[inside]))
    h = np.stack([np.ones(inside.sum()), prior_gamma[inside], prior_delta[inside]], axis=1)
    moments = torch.as_tensor(np.stack([(basis_g * h[:, [j]]).T @ basis_s for j in range(3)],
                                       axis=-1).reshape(p * q, 3))
    far = np.flatnonzero(~inside)
    far_g, far_d = torch.as_tensor(prior_gamma[far]), torch.as_tensor(prior_delta[far])
    far_values = torch.stack([torch.ones_like(far_g), far_g, far_d], dim=1)
    # log w of the far points as a rank-3 product (see _weighted_sums)
    far_terms = torch.stack([-0.5 * torch.log(2 * math.pi * far_d) - far_g * far_g / (2 * far_d),
                             far_g / far_d, -0.5 / far_d])
    far_slot = np.full(prior_gamma.size, -1)
    far_slot[far] = np.arange(far.size)
    exp_neg_s = torch.as_tensor(np.exp(-node_s))                         # (q,)
    node_term = torch.as_tensor(math.log(2 * math.pi) + node_s)          # (q,)
    tg = torch.as_tensor(node_g)
    sums = np.empty((mean.size, 3))
    rows = max(1, int(block_bytes // (8 * (p * q + far.size + 1))))
    buffer = torch.empty((min(rows, mean.size), p, q), dtype=torch.float64)   # reused: no page faults per block
    for start in range(0, mean.size, rows):
        stop = min(mean.size, start + rows)
        half_n = torch.as_tensor(0.5 * n[start:stop])[:, None]
        m = torch.as_tensor(mean[start:stop])[:, None]
        v = torch.as_tensor(var_biased[start:stop])[:, None]
        # the likelihood's maximum over every (gamma, delta): no weight exceeds exp(bound)
        bound = -half_n * (torch.log(2 * math.pi * v) + 1.0)
        # grid: log w(a, b) - bound = [-n/2 (log 2pi + s_b) - bound] + [-n/2 (v + (m - g_a)^2)] e^{-s_b}
        spread = (m - tg).square_().add_(v).mul_(-half_n)                  # (r, p)
        log_grid = torch.addcmul((-half_n * node_term - bound)[:, None, :], spread[:, :, None], exp_neg_s,
                                 out=buffer[:stop - start])
        block = log_grid.exp_().reshape(stop - start, p * q) @ moments
        own = self_index[start:stop]
        if far.size:
            query = torch.cat([2 * half_n, 2 * half_n * m, 2 * half_n * (v + m * m)], dim=1)
            log_far = (query @ far_terms).sub_(bound)
            own_far = np.where(own >= 0, far_slot[np.maximum(own, 0)], -1)
            hit = np.flatnonzero(own_far >= 0)
            log_far[torch.as_tensor(hit), torch.as_tensor(own_far[hit])] = -math.inf
            block += log_far.exp_() @ far_values
        block = block.numpy()
        # the feature's own point lies in the box: subtract its exact weight
        in_box = np.flatnonzero((own >= 0) & inside[np.maximum(own, 0)])
        if in_box.size:
            k = own[in_box]
            gk, dk = prior_gamma[k], prior_delta[k]
            nk, mk, vk = n[start:stop][in_box], mean[start:stop][in_box], var_biased[start:stop][in_box]
            log_self = -0.5 * nk * (np.log(2 * math.pi * dk) + (vk + (mk - gk) ** 2) / dk) - bound.numpy()[in_box, 0]
            w = np.exp(log_self)
            dominant = w > 0.5 * block[in_box, 0]
            block[in_box] -= w[:, None] * np.stack([np.ones_like(gk), gk, dk], axis=1)
            block[in_box[dominant]] = 0.0
        sums[start:stop] = block
    return sums


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
