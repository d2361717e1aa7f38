"""Per-scan metadata in scikit-learn pipelines and cross-validation.

Harmonizers request ``sites`` and their other side data for ``fit`` and ``transform`` (see
:mod:`surfharm.harmonize.base`). With ``sklearn.set_config(enable_metadata_routing=True)`` a
``Pipeline`` passes them to ``fit`` and, in ``pipeline.predict(X, sites=...)``, to ``transform``;
``cross_val_score(..., params={"sites": s, ...})`` refits the harmonizer on the training scans of
every fold, with the metadata sliced to those scans.

With the default scoring, cross-validation calls the pipeline's own ``score``, which routes the
held-out scans' metadata to ``transform``. Scikit-learn's named scorers (``"roc_auc"``...) call
``predict`` without metadata, so the held-out scans of a fold could not be harmonized.
:func:`routed_scorer` wraps a scorer: it requests the same metadata for
``score`` (cross-validation slices it to the held-out scans) and passes it to the estimator's
``predict``, ``predict_proba``, ``decision_function`` or ``transform``::

    sklearn.set_config(enable_metadata_routing=True)
    pipe = make_pipeline(ComBat(), LogisticRegression())
    cross_val_score(pipe, X, y, params={"sites": s, "covariates": c},
                    scoring=routed_scorer("roc_auc"))
"""
from __future__ import annotations

import functools

from sklearn.metrics import check_scoring
from sklearn.utils.metadata_routing import MetadataRequest

#: The per-scan metadata that surfharm's harmonizers take.
METADATA = ("sites", "covariates", "subjects")
_RESPONSE_METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform", "score")


class _WithMetadata:
    """An estimator seen through a scorer: its prediction methods receive the held-out scans' metadata."""

    def __init__(self, estimator, metadata: dict):
        self._estimator = estimator
        self._metadata = metadata

    def __getattr__(self, name):
        attr = getattr(self._estimator, name)
        if name in _RESPONSE_METHODS and self._metadata:
            @functools.wraps(attr)
            def with_metadata(X, *args, **kwargs):
                return attr(X, *args, **{**self._metadata, **kwargs})
            return with_metadata
        return attr

    def __sklearn_tags__(self):
        return self._estimator.__sklearn_tags__()


class RoutedScorer:
    """A scorer that passes the held-out scans' metadata to the estimator it scores (see the module docstring).

    Parameters
    ----------
    scoring : str or callable
        Any scikit-learn ``scoring`` value ("roc_auc", "r2", a scorer object...).
    metadata : tuple of str
        Names passed on when given (default: sites, covariates, subjects).
    """

    def __init__(self, scoring=None, metadata: tuple[str, ...] = METADATA):
        self.scoring = scoring
        self.metadata = tuple(metadata)

    def __call__(self, estimator, X, y_true=None, **metadata):
        unknown = sorted(set(metadata) - set(self.metadata))
        if unknown:
            raise TypeError(f"routed_scorer got metadata {unknown}; it passes on {list(self.metadata)}")
        given = {k: v for k, v in metadata.items() if v is not None}
        scorer = check_scoring(estimator, scoring=self.scoring)
        return scorer(_WithMetadata(estimator, given), X, y_true)

    def get_metadata_routing(self) -> MetadataRequest:
        request = MetadataRequest(owner=self)
        for name in self.metadata:
            request.score.add_request(param=name, alias=True)
        return request

    def __repr__(self) -> str:
        return f"routed_scorer({self.scoring!r})"


def routed_scorer(scoring=None, metadata: tuple[str, ...] = METADATA) -> RoutedScorer:
    """A scorer for cross-validation that harmonizes held-out scans with their own metadata."""
    return RoutedScorer(scoring, metadata)
