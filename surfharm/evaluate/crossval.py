"""Leakage-safe cross-validation of harmonization: the harmonizer is refit inside every fold.

For each fold, the harmonizer is fitted on the training scans only and applied to the training and
the test scans; the site classifier and the age regressor are then fitted on the harmonized
training scans and scored on the harmonized test scans. Nothing about the test scans (their maps,
their site means) enters any fit: fitting the harmonizer on all scans first would leak the test
scans' site statistics and bias site prediction downwards.

Folds: :class:`sklearn.model_selection.StratifiedGroupKFold`, stratified by site (every site must
be in every training fold, or the harmonizer could not map a test scan) and grouped by subject (all
sessions of a subject fall in the same fold, so repeated scans do not leak).

Models (scikit-learn):

* site: covariate adjustment (optional; regression on the covariates fitted on the training fold,
  so that site prediction is not driven by age differences between sites), standardisation, L2
  logistic regression (C = 1) on all principal components of the training fold (the same model as
  on the features, see the comment in :func:`cross_validate`); AUROC (one-vs-rest, macro-averaged
  over sites) and balanced accuracy;
* age: standardisation, ridge regression with its penalty chosen by an inner 3-fold cross-validation
  grouped by subject inside the training fold (leave-one-scan-out would pick a penalty that only
  recognises the other sessions of the same subject); MAE and R^2.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

from surfharm import harmonize
from surfharm.evaluate.methods import MethodSpec


@dataclass
class CVResult:
    """Out-of-fold predictions of one method (one entry per scan that was scored)."""

    site_true: np.ndarray      # (n,) str
    site_proba: np.ndarray     # (n, n_sites), columns in ``site_labels`` order
    site_labels: np.ndarray    # (n_sites,) str
    age_true: np.ndarray       # (n,)
    age_pred: np.ndarray       # (n,)

    def scores(self) -> dict[str, float]:
        """``site_auroc``, ``site_balanced_accuracy``, ``age_mae``, ``age_r2``."""
        if len(self.site_labels) == 2:
            auroc = roc_auc_score(self.site_true == self.site_labels[1], self.site_proba[:, 1])
        else:
            auroc = roc_auc_score(self.site_true, self.site_proba, multi_class="ovr", average="macro",
                                  labels=self.site_labels)
        predicted = self.site_labels[np.argmax(self.site_proba, axis=1)]
        return {"site_auroc": float(auroc),
                "site_balanced_accuracy": float(balanced_accuracy_score(self.site_true, predicted)),
                "age_mae": float(mean_absolute_error(self.age_true, self.age_pred)),
                "age_r2": float(r2_score(self.age_true, self.age_pred))}


def site_folds(sites, groups, n_splits: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (by site), grouped (by subject) folds; raises ValueError naming a site missing
    from a training fold or with fewer subjects than folds."""
    sites = np.asarray(sites).astype(str)
    groups = np.asarray(groups).astype(str)
    for site in np.unique(sites).tolist():
        n_subjects = len(np.unique(groups[sites == site]))
        if n_subjects < n_splits:
            raise ValueError(f"site {site!r} has {n_subjects} subjects; {n_splits}-fold cross-validation needs at "
                             f"least {n_splits} per site (lower n_splits)")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(sites)), sites, groups))
    for train, _ in folds:
        missing = sorted(set(sites.tolist()) - set(sites[train].tolist()))
        if missing:
            raise ValueError(f"site(s) {missing} are absent from a training fold; lower n_splits or add subjects")
    return folds


def harmonize_split(spec: MethodSpec, X: np.ndarray, table: pd.DataFrame, covariate_columns, train: np.ndarray,
                    test: np.ndarray, site_column: str = "site") -> tuple[np.ndarray, np.ndarray]:
    """Fit ``spec``'s harmonizer on ``train`` rows and apply it to ``train`` and ``test`` rows."""
    harmonizer = spec.build()
    sites = table[site_column].to_numpy()
    cov = table[list(covariate_columns)].reset_index(drop=True) if covariate_columns else None

    def side_of(rows):
        # What the method takes of the covariates and the table columns its spec names, for these rows.
        covariates = None if cov is None else cov.iloc[rows].reset_index(drop=True)
        return harmonize.side_data_for(harmonizer, covariates=covariates, **spec.table_kwargs(table, rows))

    train_side = side_of(train)
    harmonizer.fit(X[train], sites=sites[train], **train_side)
    return (harmonizer.transform(X[train], sites=sites[train], **train_side),
            harmonizer.transform(X[test], sites=sites[test], **side_of(test)))


def cross_validate(spec: MethodSpec | None, X, table: pd.DataFrame, folds, covariate_columns=(),
                   age_column: str = "age", site_column: str = "site", adjust_covariates: bool = True,
                   seed: int = 0) -> CVResult:
    """Out-of-fold site and age predictions with ``spec`` refit inside every fold.

    Parameters
    ----------
    spec : MethodSpec or None
        the method; None scores ``X`` as it is (e.g. the site-free truth).
    X : ndarray
        (n_scans, n_features), NaN outside cortex. Harmonizers get every feature (a spherical
        model needs the whole mesh); features left non-finite in a fold are dropped after it.
    table : DataFrame
        one row per scan with ``site_column``, ``age_column`` and the covariates.
    folds
        from :func:`site_folds`.
    covariate_columns
        numeric covariates given to the harmonizer (and adjusted for).
    adjust_covariates : bool
        regress the covariates out (fit on the training fold) before site prediction.
    """
    X = np.asarray(X, dtype=np.float64)
    sites = table[site_column].to_numpy().astype(str)
    subjects = table["subject"].to_numpy().astype(str) if "subject" in table else np.arange(len(table)).astype(str)
    labels = np.unique(sites)
    age = table[age_column].to_numpy(dtype=np.float64)
    cov = table[list(covariate_columns)].to_numpy(dtype=np.float64) if covariate_columns else None
    proba = np.zeros((len(sites), len(labels)))
    age_pred = np.zeros(len(sites))
    scored = np.zeros(len(sites), dtype=bool)
    for train, test in folds:
        if spec is None:
            x_train, x_test = X[train], X[test]
        else:
            x_train, x_test = harmonize_split(spec, X, table, covariate_columns, train, test, site_column)
        x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
        # A harmonizer may leave NaN where it cannot estimate: keep features finite in this fold.
        finite = np.isfinite(x_train).all(axis=0) & np.isfinite(x_test).all(axis=0)
        x_train, x_test = x_train[:, finite], x_test[:, finite]

        s_train, s_test = x_train, x_test
        if adjust_covariates and cov is not None:
            regression = LinearRegression().fit(cov[train], x_train)
            s_train = x_train - regression.predict(cov[train])
            s_test = x_test - regression.predict(cov[test])
        # An L2-penalised linear model's weights lie in the span of the training scans, and the
        # penalty is rotation-invariant: fitting it on all principal components of the training
        # scans (min(n, p) of them) gives the same predictions as on the features, much faster.
        p_train, p_test = _training_span(s_train, s_test)
        classifier = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
        classifier.fit(p_train, sites[train])
        proba[np.ix_(test, np.searchsorted(labels, classifier.classes_))] = classifier.predict_proba(p_test)

        age_pred[test] = _grouped_ridge(x_train, age[train], x_test, subjects[train], seed)
        scored[test] = True
    return CVResult(site_true=sites[scored], site_proba=proba[scored], site_labels=labels,
                    age_true=age[scored], age_pred=age_pred[scored])


def _training_span(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise by the training scans, then (when features outnumber scans) express both sets in
    an orthonormal basis of the span of the (centred) training scans: (n_train, r) and (n_test, r).

    The basis comes from the eigen-decomposition of the n_train x n_train Gram matrix (cheap when
    features far outnumber scans); it is PCA with every component kept.
    """
    scaler = StandardScaler().fit(train)
    a, b = scaler.transform(train), scaler.transform(test)
    if a.shape[1] <= a.shape[0]:  # fewer features than scans (ROI tables): nothing to gain
        return a, b
    eigval, eigvec = np.linalg.eigh(a @ a.T)
    keep = eigval > 1e-10 * max(eigval.max(), 1e-300)
    basis = (a.T @ eigvec[:, keep]) / np.sqrt(eigval[keep])
    return a @ basis, b @ basis


#: Ridge penalties tried for age prediction (features are standardised).
RIDGE_ALPHAS = np.logspace(-1, 6, 15)


def _grouped_ridge(x_train, y_train, x_test, groups, seed: int) -> np.ndarray:
    """Ridge predictions for ``x_test``, the penalty chosen by 3-fold CV grouped by subject."""
    p_train, p_test = _training_span(x_train, x_test)  # exact for an L2 penalty (see cross_validate)
    n_groups = len(np.unique(groups))
    if n_groups < 3:
        return Ridge(alpha=1.0).fit(p_train, y_train).predict(p_test)
    search = GridSearchCV(Ridge(), {"alpha": RIDGE_ALPHAS}, cv=GroupKFold(n_splits=3, shuffle=True, random_state=seed),
                          scoring="neg_mean_absolute_error")
    search.fit(p_train, y_train, groups=groups)
    return search.predict(p_test)
