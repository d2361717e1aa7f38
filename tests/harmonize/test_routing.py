"""Harmonizers in scikit-learn pipelines and cross-validation, with per-scan metadata routed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from surfharm.harmonize import ComBat, LongComBat, routed_scorer


@pytest.fixture(autouse=True)
def metadata_routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


#: Row ids of the scans each SpyComBat.fit saw (class-level: clones share it).
SEEN_IN_FIT: list[set] = []


class SpyComBat(ComBat):
    """ComBat that records which scans it was fitted on (column 0 holds each scan's id)."""

    def fit(self, X, y=None, *, sites=None, covariates=None):
        SEEN_IN_FIT.append(set(np.asarray(X)[:, 0].astype(int)))
        return super().fit(X, sites=sites, covariates=covariates)


def cohort(n=80, seed=0):
    """Scans with a site effect and a diagnosis effect; column 0 is the scan's id (constant per scan)."""
    rng = np.random.default_rng(seed)
    sites = np.array(["A", "B", "C", "D"] * (n // 4))
    age = rng.uniform(20, 70, n)
    diagnosis = rng.integers(0, 2, n)
    X = 2.5 + rng.normal(0, 0.2, (n, 30)) + 0.4 * (sites == "B")[:, None] - 0.3 * (sites == "C")[:, None]
    X[:, :5] -= 0.15 * diagnosis[:, None]
    X[:, 0] = np.arange(n)
    return X, diagnosis, sites, pd.DataFrame({"age": age, "diagnosis": diagnosis})


def test_cross_val_score_refits_the_harmonizer_on_training_scans_only():
    X, y, sites, covariates = cohort()
    SEEN_IN_FIT.clear()
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=0)
    pipe = make_pipeline(SpyComBat(), LogisticRegression(max_iter=1000))
    scores = cross_val_score(pipe, X, y, cv=folds, params={"sites": sites, "covariates": covariates},
                             scoring=routed_scorer("roc_auc"), error_score="raise")
    assert len(scores) == 4 and np.all(np.isfinite(scores))
    assert len(SEEN_IN_FIT) == 4
    for seen, (train, test) in zip(SEEN_IN_FIT, folds.split(X, y)):
        assert seen == set(train) and not seen & set(test)


def test_the_default_score_routes_the_held_out_scans_metadata_too():
    # cross_val_score(pipeline, X, y, params=...) as it stands: the pipeline's own score passes the held-out
    # scans' sites to ComBat.transform; the harmonizer is fitted on training scans only.
    X, y, sites, covariates = cohort(seed=3)
    SEEN_IN_FIT.clear()
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=3)
    pipe = make_pipeline(SpyComBat(), LogisticRegression(max_iter=1000))
    scores = cross_val_score(pipe, X, y, cv=folds, params={"sites": sites, "covariates": covariates},
                             error_score="raise")
    by_name = cross_val_score(pipe, X, y, cv=folds, params={"sites": sites, "covariates": covariates},
                              scoring=routed_scorer("accuracy"), error_score="raise")
    np.testing.assert_allclose(scores, by_name)
    for seen, (train, test) in zip(SEEN_IN_FIT, list(folds.split(X, y)) * 2):
        assert seen == set(train) and not seen & set(test)


def test_routed_cross_validation_equals_harmonizing_each_fold_by_hand():
    X, y, sites, covariates = cohort(seed=1)
    folds = list(StratifiedKFold(n_splits=3, shuffle=True, random_state=1).split(X, y))
    pipe = make_pipeline(ComBat(), LogisticRegression(max_iter=1000))
    routed = cross_val_score(pipe, X, y, cv=folds, params={"sites": sites, "covariates": covariates},
                             scoring=routed_scorer("accuracy"), error_score="raise")
    by_hand = []
    for train, test in folds:
        combat = ComBat().fit(X[train], sites=sites[train], covariates=covariates.iloc[train])
        clf = LogisticRegression(max_iter=1000).fit(combat.transform(X[train], sites=sites[train],
                                                                     covariates=covariates.iloc[train]), y[train])
        held_out = combat.transform(X[test], sites=sites[test], covariates=covariates.iloc[test])
        by_hand.append(clf.score(held_out, y[test]))
    np.testing.assert_allclose(routed, by_hand)


def test_a_plain_scorer_cannot_harmonize_held_out_scans_and_says_what_to_use():
    X, y, sites, covariates = cohort()
    pipe = make_pipeline(ComBat(), LogisticRegression(max_iter=1000))
    with pytest.raises(ValueError, match="routed_scorer"):
        cross_val_score(pipe, X, y, cv=3, params={"sites": sites, "covariates": covariates},
                        scoring="roc_auc", error_score="raise")


def test_pipeline_fit_and_predict_take_the_metadata_directly():
    X, y, sites, covariates = cohort(seed=2)
    pipe = make_pipeline(ComBat(), LogisticRegression(max_iter=1000))
    pipe.fit(X[:60], y[:60], sites=sites[:60], covariates=covariates[:60])
    predicted = pipe.predict(X[60:], sites=sites[60:], covariates=covariates[60:])
    combat = pipe[0]
    expected = pipe[1].predict(combat.transform(X[60:], sites=sites[60:], covariates=covariates[60:]))
    np.testing.assert_array_equal(predicted, expected)


def test_declared_side_data_are_requested_by_default():
    routing = LongComBat().get_metadata_routing()
    for method in ("fit", "transform"):
        requests = getattr(routing, method).requests
        assert {k for k, v in requests.items() if v is True} == {"sites", "covariates", "subjects"}
    assert "out" not in {k for k, v in ComBat().get_metadata_routing().transform.requests.items() if v is True}
