"""REML for a linear mixed model with a subject random intercept and slope, for many features at once.

Per feature (a vertex or an ROI), scan j of subject i:

    y_ij = x_ij' beta + b_i0 + b_i1 t_ij + e_ij,   b_i ~ N(0, D) (2 x 2),   e_ij ~ N(0, sigma^2)

(lme4's ``y ~ x + (1 + t | subject)``). ``D`` and ``sigma^2`` are estimated by restricted maximum
likelihood with the EM algorithm of Laird, Lange & Stram (JASA 1987) in which the fixed effects are
integrated out (flat prior), so that each EM step increases the REML likelihood:

    E-step: posterior means and covariances of (beta, b_1 .. b_m) given y, D, sigma^2
    M-step: D = mean_i E[b_i b_i' | y];  sigma^2 = E[|y - X beta - Z b|^2 | y] / n.

Plain EM crawls where a variance heads for zero (no slope variation), so the steps are accelerated
by SQUAREM (Varadhan & Roland, Scand. J. Stat. 2008): two EM steps, an extrapolation, a third EM
step; each cycle ends on an EM step, but the extrapolation itself is not guaranteed to increase
the likelihood. On simulated data the estimates agree with statsmodels' MixedLM (REML) to about 1e-4.

Everything the E-step needs is per subject and 2 x 2: ``M_i = Z_i'Z_i + sigma^2 D^-1`` and the
subject sums ``Z_i'y_i``; the fixed-effect system ``X'V^-1 X`` is a sum over subjects of three
outer-product tables (shared by all features) weighted by the entries of ``M_i^-1`` (one matrix
product per table). So a block of features costs a few (subjects x features) array operations per
iteration. Features stop iterating one by one once their parameters change by less than ``tol``
(relative to sigma^2) in a cycle. The caller centres and scales time (LongComBat does; the model is
the same under that change of variable, and the sums are better conditioned).
"""
from __future__ import annotations

import numpy as np

TOLERANCE = 1e-6
MAX_ITERATIONS = 500


class SubjectDesign:
    """What every feature shares: per-subject sums of the random-effect and fixed-effect designs.

    ``design`` (n, P) fixed effects, ``subject_codes`` (n,) in 0..m-1, ``time`` (n,) scaled time.
    """

    def __init__(self, design: np.ndarray, subject_codes: np.ndarray, time: np.ndarray):
        n_subjects = int(subject_codes.max()) + 1
        self.n_scans, self.n_cols = design.shape
        self.n_subjects = n_subjects
        self.indicator = np.zeros((self.n_scans, n_subjects))
        self.indicator[np.arange(self.n_scans), subject_codes] = 1.0
        self.time = time
        self.ztz = np.stack([self.indicator.T @ np.ones(self.n_scans), self.indicator.T @ time,
                             self.indicator.T @ time**2])                       # (3, m): n_i, sum t, sum t^2
        self.u = self.indicator.T @ design                                     # (m, P): X_i' 1
        self.v = self.indicator.T @ (time[:, None] * design)                   # (m, P): X_i' t
        self.uu = np.einsum("mp,mq->mpq", self.u, self.u).reshape(n_subjects, -1)
        self.vv = np.einsum("mp,mq->mpq", self.v, self.v).reshape(n_subjects, -1)
        uv = np.einsum("mp,mq->mpq", self.u, self.v)
        self.uv_sym = (uv + uv.transpose(0, 2, 1)).reshape(n_subjects, -1)
        self.xtx = design.T @ design

    def subject_sums(self, residual_rows: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray]:
        """(sum over each subject's scans of r, of t r) for a tile of residuals (rows, B): two (m, B)."""
        ind = self.indicator[rows]
        return ind.T @ residual_rows, (ind * self.time[rows, None]).T @ residual_rows


def _inverse_2x2(a00, a01, a11):
    det = a00 * a11 - a01 * a01
    return a11 / det, -a01 / det, a00 / det


def posterior_weights(ztz, sigma2, d00, d01, d11):
    """Entries of M_i^-1 = (Z_i'Z_i + sigma^2 D^-1)^-1, each (m, B)."""
    i00, i01, i11 = _inverse_2x2(d00, d01, d11)
    return _inverse_2x2(ztz[0][:, None] + sigma2 * i00, ztz[1][:, None] + sigma2 * i01,
                        ztz[2][:, None] + sigma2 * i11)


def blups(w, zy0, zy1):
    """b_i = M_i^-1 Z_i' r_i: two (m, B) arrays (intercept, slope)."""
    w00, w01, w11 = w
    return w00 * zy0 + w01 * zy1, w01 * zy0 + w11 * zy1


def fit_reml(sd: SubjectDesign, zy0, zy1, xty, yty, *, tol=TOLERANCE, max_iter=MAX_ITERATIONS):
    """REML estimates for a block of B features.

    ``zy0, zy1`` (m, B) subject sums of y and t y; ``xty`` (P, B); ``yty`` (B,). Returns
    ``beta`` (P, B), ``sigma2`` (B,), ``D`` (3, B) as (var intercept, covariance, var slope) in scaled
    time, and ``iterations`` (B,) the SQUAREM cycles (3 EM steps each) each feature took
    (``max_iter`` = stopped before converging; the last iterate is returned).
    """
    n, p = sd.n_scans, sd.n_cols
    n_features = yty.shape[0]
    beta0 = np.linalg.solve(sd.xtx, xty)
    rss = np.maximum(yty - np.einsum("pg,pg->g", beta0, xty), 1e-300)
    # Start inside the parameter space (EM never leaves a zero variance): a third of the residual
    # variance to each of the intercept, the slope (time has unit variance) and the noise.
    sigma2 = rss / (n - p) / 3.0
    theta = np.stack([sigma2, sigma2, np.zeros(n_features), sigma2])                      # (sigma^2, D entries)
    iterations = np.full(n_features, max_iter)
    active = np.arange(n_features)
    for step in range(1, max_iter + 1):
        data = zy0[:, active], zy1[:, active], xty[:, active], yty[active]
        theta[:, active], change = _squarem_step(sd, data, theta[:, active])
        done = change < tol
        iterations[active[done]] = step
        active = active[~done]
        if not active.size:
            break
    sigma2, d = theta[0], theta[1:]
    # Fixed effects at the final variance parameters (the last E-step used the previous ones).
    beta, *_ = _fixed_effects(sd, zy0, zy1, xty, sigma2, d)
    return beta, sigma2, d, iterations


def _squarem_step(sd, data, theta0):
    """One SQUAREM cycle of the EM map for every feature: (4, B) new parameters and their relative change.

    Two EM steps give the direction and the step length (SqS3, step length at least one EM step);
    the extrapolated point, kept inside the parameter space, is polished by a third EM step.
    """
    def em(theta):
        return np.vstack(_em_step(sd, *data, theta[0], theta[1:]))

    theta1 = em(theta0)
    theta2 = em(theta1)
    r = theta1 - theta0
    v = theta2 - theta1 - r
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.minimum(-np.sqrt((r * r).sum(axis=0) / (v * v).sum(axis=0)), -1.0)
    alpha = np.where(np.isfinite(alpha), alpha, -1.0)
    jump = theta0 - 2 * alpha * r + alpha**2 * v
    # Keep the jump a valid parameter: a variance heading for zero may shrink a thousandfold per
    # cycle (plain EM only creeps towards a zero variance), the correlation stays inside (-1, 1).
    for k in (0, 1, 3):
        jump[k] = np.maximum(jump[k], 1e-3 * theta2[k])
    limit = (1 - 1e-9) * np.sqrt(jump[1] * jump[3])
    jump[2] = np.clip(jump[2], -limit, limit)
    theta3 = em(jump)
    change = np.abs(theta3 - theta0).max(axis=0) / theta3[0]
    return theta3, change


def _fixed_effects(sd, zy0, zy1, xty, sigma2, d):
    """GLS beta (P, B), the inverse of X'V^-1 X (scaled by sigma^2; (B, P, P)) and the M_i^-1 entries."""
    w = posterior_weights(sd.ztz, sigma2, *d)
    w00, w01, w11 = w
    p = sd.n_cols
    a = sd.xtx.reshape(-1, 1) - (sd.uu.T @ w00 + sd.vv.T @ w11 + sd.uv_sym.T @ w01)     # (P*P, B)
    a = a.T.reshape(-1, p, p)
    wy0, wy1 = blups(w, zy0, zy1)
    rhs = xty - (sd.u.T @ wy0 + sd.v.T @ wy1)
    a_inv = np.linalg.inv(a)
    beta = np.einsum("bpq,qb->pb", a_inv, rhs)                                               # (P, B)
    return beta, a_inv, w


def _em_step(sd, zy0, zy1, xty, yty, sigma2, d):
    n, p, m = sd.n_scans, sd.n_cols, sd.n_subjects
    beta, a_inv, w = _fixed_effects(sd, zy0, zy1, xty, sigma2, d)
    w00, w01, w11 = w
    r0 = zy0 - sd.u @ beta                                                                  # Z_i'(y_i - X_i beta)
    r1 = zy1 - sd.v @ beta
    b0, b1 = blups(w, r0, r1)
    # |y - X beta - Z b|^2 = |y - X beta|^2 - 2 sum b_i' Z_i' r_i + sum b_i' Z_i'Z_i b_i
    fit_ss = yty - 2 * np.einsum("pg,pg->g", beta, xty) + np.einsum("pg,pq,qg->g", beta, sd.xtx, beta)
    ztz = sd.ztz
    resid_ss = (fit_ss - 2 * (b0 * r0 + b1 * r1).sum(axis=0)
                + (ztz[0][:, None] * b0 * b0 + 2 * ztz[1][:, None] * b0 * b1 + ztz[2][:, None] * b1 * b1).sum(axis=0))
    # Posterior covariance of b_i: sigma^2 (M_i^-1 + M_i^-1 Q_i M_i^-1), Q_i = [u_i v_i]' A^-1 [u_i v_i].
    a_inv = a_inv.reshape(a_inv.shape[0], -1).T                                             # (P*P, B)
    q00, q11 = sd.uu @ a_inv, sd.vv @ a_inv
    q01 = 0.5 * (sd.uv_sym @ a_inv)
    # (M^-1 Q M^-1) entries, M^-1 = [[w00, w01], [w01, w11]]
    t00, t01 = w00 * q00 + w01 * q01, w00 * q01 + w01 * q11                                 # (M^-1 Q) row 0
    t10, t11 = w01 * q00 + w11 * q01, w01 * q01 + w11 * q11                                 # (M^-1 Q) row 1
    c00 = sigma2 * (w00 + t00 * w00 + t01 * w01)
    c01 = sigma2 * (w01 + t00 * w01 + t01 * w11)
    c11 = sigma2 * (w11 + t10 * w01 + t11 * w11)
    new_d = np.stack([(b0 * b0 + c00).mean(axis=0), (b0 * b1 + c01).mean(axis=0), (b1 * b1 + c11).mean(axis=0)])
    i00, i01, i11 = _inverse_2x2(*d)
    trace = (i00 * c00 + 2 * i01 * c01 + i11 * c11).sum(axis=0)                             # sum_i tr(D^-1 C_i)
    new_sigma2 = (resid_ss + sigma2 * (p + 2 * m - trace)) / n
    return new_sigma2[None], new_d
