"""Adding a scanner never seen in training to a fitted model of the ComBat family, the model held fixed.

A new site's scans are standardised exactly as the training scans were (the stored grand mean,
covariate coefficients and pooled variance: ``z = (y - alpha - x'beta) / sigma``); the site's
location and scale are estimated from its own ``z`` and shrunk by empirical Bayes as ComBat shrinks
every site. Nothing else in the model changes, so the training scans' output is unchanged, and
neither the training data nor a refit is needed.

Empirical Bayes priors of the new site (``priors=``):

- ``"own"`` (default): the new site's hyperparameters (gamma_bar, tau2, a, b, or its own points for
  non-parametric EB) are estimated across features from its own estimates, exactly as ComBat
  estimates them for each training site. ComBat's priors are per site (pooled over features, never
  over sites), so this is what refitting with the new site would do; the training sites' average
  ``gamma_bar`` would pull the new scanner's overall offset towards theirs.
- ``"training"``: the average of the training sites' hyperparameters (parametric EB only), for a new
  site with so few features that its own hyperparameters are unreliable.
"""
from __future__ import annotations

import numpy as np

from surfharm.harmonize import _design, _eb
from surfharm.harmonize._tiles import _check_matrix, _feature_blocks, _row_blocks
from surfharm.harmonize.base import HarmonizerInputError, check_n_features, require_sites

PRIOR_CHOICES = ("own", "training")


def new_site_rows(model, sites, n_scans: int, *, replace: bool, needed: int, what: str):
    """``[(label, rows)]`` of the sites to add, checked: not known (unless ``replace``), enough scans each."""
    sites = require_sites(sites, n_scans, f"{type(model).__name__}.adapt")
    labels = _design.site_levels(sites)
    keys = [str(s) for s in sites]
    known = [str(s) for s in model.sites_]
    existing = [str(label) for label in labels if str(label) in known]
    if existing and not replace:
        raise HarmonizerInputError(
            f"site(s) {existing} are already in the model (sites {known}); adapt adds sites the model has not "
            "seen. Pass replace=True to estimate them again from these scans")
    reference = getattr(model, "reference_site", None)
    if reference is not None and str(reference) in existing:
        raise HarmonizerInputError(f"site {str(reference)!r} is the model's reference site: it cannot be replaced")
    groups = [(label, np.flatnonzero(np.array([k == str(label) for k in keys]))) for label in labels]
    small = {str(label): int(rows.size) for label, rows in groups if rows.size < needed}
    if small:
        raise HarmonizerInputError(
            f"site(s) {small} (scans per site) have too few scans to adapt the model: {what} needs at least "
            f"{needed} scan(s) per new site")
    return groups


def site_label(model_sites, label):
    """The label in the form of the model's labels (ints stay ints only when every label is an int)."""
    if all(isinstance(s, (int, np.integer)) for s in model_sites) and isinstance(label, (int, np.integer)):
        return int(label)
    return str(label)


def adapt_combat(model, X, sites, covariates, *, replace: bool = False, priors: str = "own", site_model) -> list:
    """Estimate the new sites of ``X`` for a fitted :class:`~surfharm.harmonize.ComBat`; returns their labels.

    ``site_model``: the ComBat class, whose per-site estimation and shrinkage are run on the new sites.
    """

    model.check_is_fitted()
    if priors not in PRIOR_CHOICES:
        raise HarmonizerInputError(f"priors={priors!r}; expected one of {PRIOR_CHOICES}")
    if priors == "training" and model.eb and not model.parametric:
        raise HarmonizerInputError("priors='training' is for parametric empirical Bayes; non-parametric EB uses "
                                   "the new site's own features as prior points (priors='own')")
    X = _check_matrix(X)
    check_n_features(model, X)
    needed = 1 if model.mean_only else 2
    groups = new_site_rows(model, sites, X.shape[0], replace=replace, needed=needed,
                           what="ComBat with mean_only=True" if model.mean_only else
                           "estimating a site's scale (variance) effect")
    cov = model.encoder_.transform(covariates, X.shape[0])
    n_new, n_features = len(groups), model.n_features_in_
    n = np.zeros((n_new, n_features))
    s1 = np.zeros((n_new, n_features))
    s2 = np.zeros((n_new, n_features))
    codes = np.full(X.shape[0], -1)
    for k, (_, rows) in enumerate(groups):
        codes[rows] = k
    indicator = _design.one_hot(codes, n_new)
    for block in _feature_blocks(n_features):
        sigma = np.sqrt(model.var_pooled_[block])
        coef = model.covariate_coef_[:, block]
        for rows, tile in _row_blocks(X, block):
            tile -= model.grand_mean_[block]
            if coef.shape[0]:
                tile -= cov[rows] @ coef
            tile /= sigma
            observed = np.isfinite(tile)
            tile[~observed] = 0.0
            n[:, block] += indicator[rows].T @ observed
            s1[:, block] += indicator[rows].T @ tile
            s2[:, block] += indicator[rows].T @ (tile * tile)
    if model.mean_only:
        needed_features = n >= 1
    else:
        needed_features = n >= 2
    short = [str(label) for k, (label, _) in enumerate(groups) if not needed_features[k][~model.unchanged_].any()]
    if short:
        raise HarmonizerInputError(f"site(s) {short} have no feature observed in {needed} scan(s): nothing to estimate")

    # The new sites' estimates and shrinkage: ComBat's own per-site code, on a model of the new sites only.
    part = site_model(eb=model.eb, parametric=model.parametric, mean_only=model.mean_only)
    part.unchanged_ = model.unchanged_
    part.reference_index_ = None
    if priors == "own" or not model.eb:
        part._fit_site_effects(n, s1, s2)
    else:
        _fit_with_training_priors(part, model, n, s1, s2)
    labels = []
    for k, (label, _) in enumerate(groups):
        label = site_label(model.sites_, label)
        keys = [str(s) for s in model.sites_]
        if str(label) in keys:
            i = keys.index(str(label))
            model.site_counts_ = np.array(model.site_counts_).copy()
            model.site_counts_[i] = int(indicator[:, k].sum())
            for name in ("gamma_hat_", "delta_hat_", "gamma_star_", "delta_star_"):
                getattr(model, name)[i] = getattr(part, name)[k]
            for name in ("gamma_bar_", "tau2_", "a_prior_", "b_prior_"):
                getattr(model, name)[i] = getattr(part, name)[k]
        else:
            model.sites_ = [*model.sites_, label]
            model.site_counts_ = np.append(model.site_counts_, int(indicator[:, k].sum()))
            for name in ("gamma_hat_", "delta_hat_", "gamma_star_", "delta_star_"):
                setattr(model, name, np.vstack([getattr(model, name), getattr(part, name)[k:k + 1]]))
            for name in ("gamma_bar_", "tau2_", "a_prior_", "b_prior_"):
                setattr(model, name, np.append(getattr(model, name), getattr(part, name)[k]))
        labels.append(label)
    adapted = list(getattr(model, "adapted_sites_", []) or [])
    model.adapted_sites_ = adapted + [s for s in labels if s not in adapted]
    return labels


def training_priors(model) -> tuple[float, float, float, float]:
    """The average over the training sites (the reference excluded) of gamma_bar, tau2, a and b."""
    adapted = {str(s) for s in getattr(model, "adapted_sites_", [])}
    use = np.array([str(s) not in adapted for s in model.sites_])
    values = [np.asarray(getattr(model, name), dtype=float)[use]
              for name in ("gamma_bar_", "tau2_", "a_prior_", "b_prior_")]
    out = []
    for v in values:
        v = v[np.isfinite(v)]
        out.append(float(v.mean()) if v.size else np.nan)
    if not np.isfinite(out[0]) or not np.isfinite(out[1]):
        raise HarmonizerInputError("the model holds no training priors (fitted without empirical Bayes, or only a "
                                   "reference site): use priors='own'")
    return tuple(out)


def _fit_with_training_priors(part, model, n, s1, s2) -> None:
    """As ComBat's per-site estimates and parametric EB, with the training sites' average hyperparameters."""
    gamma_bar, tau2, a, b = training_priors(model)
    n_sites, n_features = n.shape
    gamma_hat = np.full((n_sites, n_features), np.nan)
    delta_hat = np.full((n_sites, n_features), np.nan)
    gamma_star = np.zeros((n_sites, n_features))
    delta_star = np.ones((n_sites, n_features))
    priors = np.full((4, n_sites), np.nan)
    for i in range(n_sites):
        n_i = n[i]
        with np.errstate(invalid="ignore", divide="ignore"):
            gamma_hat[i] = s1[i] / n_i
            delta_hat[i] = np.where(n_i >= 2, (s2[i] - s1[i] * s1[i] / n_i) / (n_i - 1), np.nan)
        delta_hat[i, delta_hat[i] == 0] = 1.0
        if model.mean_only:
            delta_hat[i] = np.where(n_i >= 1, 1.0, np.nan)
        ok = (n_i >= 1) & ~model.unchanged_
        gamma_hat[i, ~ok] = np.nan
        delta_hat[i, ~ok] = np.nan
        priors[:, i] = gamma_bar, tau2, a, b
        if model.mean_only:
            g = _eb.posterior_mean(gamma_hat[i, ok], gamma_bar, 1.0, 1.0, tau2)
            d = np.ones_like(g)
        else:
            if not (np.isfinite(a) and np.isfinite(b)):
                raise HarmonizerInputError("the model holds no training scale priors: use priors='own'")
            g, d = _eb.parametric(n_i[ok], s1[i, ok], s2[i, ok], gamma_hat[i, ok], delta_hat[i, ok],
                                  gamma_bar=gamma_bar, tau2=tau2, a=a, b=b)
            d = np.where(np.isfinite(d), d, 1.0)
        gamma_star[i, ok], delta_star[i, ok] = g, d
    part.gamma_hat_, part.delta_hat_ = gamma_hat, delta_hat
    part.gamma_star_, part.delta_star_ = gamma_star, delta_star
    part.gamma_bar_, part.tau2_, part.a_prior_, part.b_prior_ = priors
