"""The harmonizer contract shared by every method: scikit-learn estimators with per-scan metadata.

Every harmonizer is a scikit-learn transformer (:class:`sklearn.base.BaseEstimator` +
:class:`sklearn.base.TransformerMixin`), so ``clone``, ``get_params(deep=True)``, ``set_params``,
tags, ``repr`` and pipelines work as for any estimator:

- ``__init__`` takes keyword-only hyperparameters and only stores them;
- ``fit(X, y=None, *, sites, covariates=None, ...) -> self`` learns state whose names end in ``_``;
- ``transform(X, *, sites, covariates=None, ...) -> X_harmonized`` checks that it was fitted and
  that the features and sites match what ``fit`` saw, naming the offending value when they don't;
- ``fit_transform`` = ``fit`` then ``transform`` on the same scans and metadata;
- ``save(path)`` writes one model file; :func:`load` reads any of them back (never a pickle).

``X`` is ``(n_scans, n_features)`` float: vertices of an icosahedral map, ROIs or voxels; NaN marks
a missing value or a vertex outside cortex. ``y`` is ignored (it is there for pipelines).

Per-scan side data are keyword arguments, never positional: ``sites`` (one label per scan, str or
int), ``covariates`` (a DataFrame or array, one row per scan) and, where a method declares them in
:attr:`Harmonizer.side_data`, others such as ``subjects``. They are scikit-learn *metadata*: with
``sklearn.set_config(enable_metadata_routing=True)`` every harmonizer requests them for ``fit`` and
``transform`` by default, so a pipeline passes them through and cross-validation slices them with
the scans. The default scoring (the pipeline's ``score``) passes the held-out scans' metadata on;
scikit-learn's named scorers do not yet pass metadata to ``predict``, so wrap them in
:func:`routed_scorer`, which does (see :mod:`surfharm.harmonize.routing`).

Harmonizers register themselves by name (:func:`register`) so that ``surfharm benchmark``,
``surfharm harmonize --method NAME`` and :func:`load` treat every method alike.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils import metadata_routing

from surfharm.errors import HarmonizerInputError, ModelFileError, SurfharmError
from surfharm.io import model_files

_REGISTRY: dict[str, type["Harmonizer"]] = {}
#: Built-in harmonizers outside this package's eager imports (torch, NIfTI): imported the first
#: time they are asked for, so ``import surfharm.harmonize`` stays light.
_LAZY: dict[str, str] = {"s2sgan": "surfharm.harmonize.s2sgan", "cdae": "surfharm.harmonize.cdae",
                         "paired-unet": "surfharm.harmonize.paired", "deepcombat": "surfharm.harmonize.deepcombat",
                         "deepharmony": "surfharm.harmonize.volumetric.deep_harmony",
                         "imunity": "surfharm.harmonize.volumetric.imunity",
                         "murd": "surfharm.harmonize.volumetric.murd",
                         "mispel": "surfharm.harmonize.volumetric.mispel",
                         "calamiti": "surfharm.harmonize.volumetric.calamiti"}
#: Modules that register several methods at once (loaded by :func:`get` / :func:`available`).
_LAZY_GROUPS: list[str] = []

#: Call options of ``fit``/``transform`` that are not per-scan metadata (never routed).
_NOT_METADATA = {"out", "direction", "batch_size", "device", "target_site"}


class NotFittedError(SurfharmError, _SklearnNotFittedError, RuntimeError):
    """``transform``/``save`` called before ``fit`` (also scikit-learn's ``NotFittedError``)."""


class AdaptNotSupportedError(SurfharmError, NotImplementedError):
    """``adapt`` called on a method that cannot add a new site to a fitted model."""


def register(name: str):
    """Class decorator: make a harmonizer available under ``name`` (e.g. ``"combat"``)."""

    def deco(cls: type[Harmonizer]) -> type[Harmonizer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"harmonizer name {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def register_lazy(name: str, module: str) -> None:
    """Announce that importing ``module`` registers the harmonizer ``name`` (imported on first use)."""
    _LAZY.setdefault(name, module)


def register_lazy_group(module: str) -> None:
    """Announce a module that registers several harmonizers (imported by :func:`get`/:func:`available`)."""
    if module not in _LAZY_GROUPS:
        _LAZY_GROUPS.append(module)


def get(name: str) -> type["Harmonizer"]:
    """Return the harmonizer class registered as ``name``; the error lists the known names."""
    _import_builtin_harmonizers()
    if name not in _REGISTRY and name in _LAZY:
        try:
            importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as exc:
            if exc.name not in ("torch", "safetensors"):
                raise
            raise ModuleNotFoundError(f"harmonizer {name!r} needs {exc.name}, which is not installed: "
                                      "pip install 'surfharm[deep]' (install the torch build you want first)",
                                      name=exc.name) from None
    if name not in _REGISTRY:
        _import_lazy_groups()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown harmonizer {name!r}; available: {', '.join(available())}") from None


def available() -> list[str]:
    """Names of every registered harmonizer, sorted."""
    _import_builtin_harmonizers()
    _import_lazy_groups()
    return sorted(set(_REGISTRY) | set(_LAZY))


def _import_builtin_harmonizers() -> None:
    # Importing the package registers the built-in methods (their modules call ``register``).
    import surfharm.harmonize  # noqa: F401


def _import_lazy_groups() -> None:
    for module in list(_LAZY_GROUPS):
        importlib.import_module(module)


class Harmonizer(TransformerMixin, BaseEstimator):
    """Base of every harmonizer (see the module docstring for the contract).

    Subclasses implement ``fit`` and ``transform`` with explicit keyword-only side data (unknown
    arguments raise ``TypeError``), and describe their fitted state for the model file with
    :meth:`_get_state` / :meth:`_set_state`; :meth:`save` and :func:`load` do the rest.
    """

    #: Name in the registry (set by :func:`register`).
    registry_name: ClassVar[str] = ""
    #: Per-scan side data that ``fit`` and ``transform`` take besides ``sites`` (routed metadata).
    side_data: ClassVar[tuple[str, ...]] = ("covariates",)
    #: Side data without which ``fit`` cannot work (e.g. ``("subjects",)``); ``sites`` always is.
    required_side_data: ClassVar[tuple[str, ...]] = ()
    #: Whether scans may miss some values of a feature (NaN); False: only features missing in every scan
    #: (a medial wall) are allowed, a partly missing one is refused. Read into scikit-learn's tags.
    allows_partial_nan: ClassVar[bool] = True
    #: Parameters about how a model is trained or run (checkpoints, progress, device), not about the
    #: model: left out of the model file, so a loaded model takes the defaults (e.g. the CPU).
    run_options: ClassVar[tuple[str, ...]] = ()
    #: Keyword options of ``fit`` that are not per-scan data (e.g. RAVEL's ``control_mask``); never routed.
    fit_options: ClassVar[tuple[str, ...]] = ()
    #: Whether ``fit`` needs sites (False for per-scan intensity methods, which learn no site effect).
    requires_sites: ClassVar[bool] = True
    #: Model file container: ".npz" (arrays + JSON) or ".safetensors" (networks).
    model_suffix: ClassVar[str] = ".npz"
    #: A learned attribute that exists once the model is fitted.
    fitted_attribute: ClassVar[str] = "n_features_in_"
    #: Whether :meth:`adapt` can add a site never seen in training to the fitted model.
    supports_adapt: ClassVar[bool] = False
    # ``fitted_on_`` (optional dict, set by whoever fits the model): what the model was fitted on
    # (hemisphere, measure, level, ...); saved in the model file and read back by ``load``, so that
    # applying it to other data can be refused.

    def __init_subclass__(cls, **kwargs):
        # scikit-learn's default metadata requests: sites and every declared side datum are requested
        # by fit and transform; other keyword options (out=, direction=...) are never routed.
        for method in ("fit", "transform"):
            func = getattr(cls, method, None)
            params = inspect.signature(func).parameters if func is not None else {}
            requests = {n: True for n in ("sites", *cls.side_data) if n in params}
            requests.update({n: metadata_routing.UNUSED for n in _NOT_METADATA if n in params})
            setattr(cls, f"__metadata_request__{method}", requests)
        super().__init_subclass__(**kwargs)

    def fit(self, X, y=None, *, sites=None, covariates=None) -> "Harmonizer":  # pragma: no cover - abstract
        """Learn the site effects from ``X`` (n_scans, n_features); return self."""
        raise NotImplementedError(f"{type(self).__name__} does not implement fit")

    def transform(self, X, *, sites=None, covariates=None):  # pragma: no cover - abstract
        """Return ``X`` with site effects removed, same shape and NaN pattern as ``X``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement transform")

    def adapt(self, X, *, sites=None, covariates=None, **options) -> "Harmonizer":
        """Add the sites of ``X`` that the model has not seen, from their own scans, the model held fixed.

        Methods that can (``supports_adapt``) estimate each new site's parameters without refitting
        and without the training data; the others raise :class:`AdaptNotSupportedError`.
        """
        raise AdaptNotSupportedError(
            f"{type(self).__name__} ({self.registry_name or 'unregistered'}) cannot adapt to a new site: it "
            "learns no per-site parameters that could be estimated from a new site's scans alone. Fit the "
            "model again including scans of the new site")

    def fit_transform(self, X, y=None, **side):
        """``fit`` then ``transform`` on the same scans with the same side data (:meth:`metadata_names`)."""
        unknown = sorted(set(side) - set(self.metadata_names()))
        if unknown:
            raise TypeError(f"{type(self).__name__}.fit_transform got unexpected arguments {unknown}; "
                            f"it takes {', '.join(self.metadata_names())}")
        return self.fit(X, y, **side).transform(X, **side)

    @classmethod
    def metadata_names(cls) -> tuple[str, ...]:
        """The per-scan side data this method takes: ``("sites", *side_data)``."""
        return ("sites", *cls.side_data)

    # -- scikit-learn -----------------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.allows_partial_nan
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return getattr(self, self.fitted_attribute, None) is not None

    def check_is_fitted(self, attribute: str | None = None) -> None:
        """Raise :class:`NotFittedError` unless ``attribute`` (a learned ``*_`` name) is set."""
        if getattr(self, attribute or self.fitted_attribute, None) is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call "
                                 f"fit(X, sites=..., ...) first")

    # -- model files -------------------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The fitted state: ``(arrays, metadata)``; metadata must be JSON-able. Subclasses override."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore what :meth:`_get_state` returned (inverse). Subclasses override."""
        raise NotImplementedError(f"{type(self).__name__} cannot be loaded")

    def _check_state(self, check: "StateCheck") -> None:
        """Refuse impossible fitted values after loading (non-finite parameters, zero scales)."""

    def _file_params(self) -> dict[str, Any]:
        """The hyperparameters as stored in the model file (JSON: tuples become lists)."""
        params = self.get_params(deep=False)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items() if k not in self.run_options}

    def save(self, path) -> Path:
        """Write the fitted model to ``path`` (``.npz`` or ``.safetensors`` with JSON; no pickle), atomically."""
        self.check_is_fitted()
        path = Path(path)
        if path.suffix != self.model_suffix:
            raise ValueError(f"model file {path} must end in {self.model_suffix} for a {type(self).__name__}")
        arrays, meta = self._get_state()
        meta = {"method": self.registry_name, "class": type(self).__name__, "params": self._file_params(), **meta}
        if getattr(self, "fitted_on_", None):
            meta["fitted_on"] = dict(self.fitted_on_)
        if self.model_suffix == ".safetensors":
            return model_files.write_safetensors(path, arrays, meta)
        return model_files.write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path, **options) -> "Harmonizer":
        """Read a model written by :meth:`save`. On :class:`Harmonizer` itself, the file decides the class.

        ``options`` override hyperparameters that do not change the model (e.g. ``device`` of a
        network). Parameters are checked for impossible values (non-finite, zero scales): the
        error names the file and the parameter.
        """
        path = Path(path)
        meta = model_files.read_metadata(path)
        _check_version(path, meta)
        target = _class_of(path, meta)
        if cls is not Harmonizer and not issubclass(target, cls):
            raise ModelFileError(f"{path} holds a {meta.get('method')!r} model, not "
                                 f"{cls.registry_name or cls.__name__!r} (a {target.__name__}, not a {cls.__name__}); "
                                 "read it with surfharm.harmonize.load")
        arrays, meta = model_files.read_model(path)
        params = meta.get("params", {})
        if not isinstance(params, dict):
            raise ModelFileError(f"{path}: 'params' in its metadata is a {type(params).__name__}; expected an object")
        model = target._from_file_params(path, {**params, **options})
        try:
            model._set_state(arrays, meta)
        except KeyError as exc:
            raise ModelFileError(f"{path} lacks {exc.args[0]!r}, which a {target.__name__} model holds; "
                                 "the file is damaged or was not written by surfharm") from None
        model._check_state(StateCheck(path))
        fitted_on = meta.get("fitted_on")
        model.fitted_on_ = dict(fitted_on) if isinstance(fitted_on, dict) else {}
        return model

    @classmethod
    def _from_file_params(cls, path, params: dict[str, Any]) -> "Harmonizer":
        signature = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(params) - set(signature))
        if unknown:
            raise ModelFileError(f"{path}: parameters {unknown} are not parameters of {cls.__name__}; "
                                 f"expected some of {sorted(p for p in signature if p != 'self')}")
        # Tuples were stored as JSON lists: give them back in the form the constructor's default has.
        typed = {k: tuple(v) if isinstance(v, list) and isinstance(signature[k].default, tuple) else v
                 for k, v in params.items()}
        return cls(**typed)


def load(path, **options) -> Harmonizer:
    """Read any surfharm model file (``.npz`` or ``.safetensors``) and return the fitted harmonizer.

    The method recorded in the file decides the class (ComBat, LongComBat, S2SGAN, baselines,
    volumetric methods); ``options`` are passed on as for :meth:`Harmonizer.load`.
    """
    return Harmonizer.load(path, **options)


def _check_version(path: Path, meta: dict[str, Any]) -> None:
    import surfharm

    written_by = str(meta.get("surfharm_version", ""))
    if written_by and written_by.split(".")[0] != surfharm.__version__.split(".")[0]:
        raise ModelFileError(f"{path} was written by surfharm {written_by}; this is surfharm {surfharm.__version__} "
                             "(another major version): fit or train the model again")


def _class_of(path: Path, meta: dict[str, Any]) -> type[Harmonizer]:
    method = meta.get("method")
    if method is None and meta.get("format") == "surfharm-s2sgan":
        method = "s2sgan"                       # S2SGAN files of 0.1.0 name their format, not the method
    if not method:
        raise ModelFileError(f"{path}: the model metadata names no method; expected a file written by surfharm")
    try:
        return get(method)
    except KeyError:
        raise ModelFileError(f"{path} holds a model of method {method!r}, which this surfharm does not have; "
                             f"known methods: {', '.join(available())}") from None


class StateCheck:
    """Checks of loaded parameters that name the model file and the parameter when one is impossible."""

    def __init__(self, path):
        self.path = Path(path)

    def shape(self, name: str, array, expected: tuple) -> np.ndarray:
        """``array`` has shape ``expected`` (None in ``expected`` matches any length)."""
        arr = np.asarray(array)
        if arr.ndim != len(expected) or any(e is not None and a != e for a, e in zip(arr.shape, expected)):
            raise ModelFileError(f"{self.path}: parameter {name!r} has shape {arr.shape}; expected "
                                 f"{tuple('any' if e is None else e for e in expected)}")
        return arr

    def finite(self, name: str, array, where=None, positive: bool = False) -> None:
        """Every value of ``array`` (where ``where`` is True) is finite, and > 0 with ``positive``."""
        arr = np.asarray(array, dtype=np.float64)
        values = arr if where is None else arr[..., np.asarray(where, dtype=bool)]
        bad = ~np.isfinite(values)
        if bad.any():
            raise ModelFileError(f"{self.path}: parameter {name!r} holds {int(bad.sum())} non-finite value(s) "
                                 "(NaN or inf); the model is damaged: fit it again")
        if positive and (values <= 0).any():
            raise ModelFileError(f"{self.path}: parameter {name!r} holds {int((values <= 0).sum())} value(s) <= 0; "
                                 "it is a scale and must be positive: the model is damaged, fit it again")


# -- validation helpers shared by all harmonizers -----------------------------------------------------

def require_sites(sites, n_scans: int, owner: str) -> np.ndarray:
    """Checked site labels; a clear error when ``sites`` was not given (e.g. in a pipeline)."""
    if sites is None:
        raise HarmonizerInputError(
            f"{owner} needs sites=: one site label per scan. In a scikit-learn pipeline, enable metadata "
            "routing (sklearn.set_config(enable_metadata_routing=True)) and pass sites= to fit/predict; "
            "in cross-validation pass params={'sites': ...}, and with a named scorer "
            "scoring=surfharm.harmonize.routed_scorer('roc_auc')")
    return check_sites(sites, n_scans)


def check_matrix_shape(X, *, name: str = "X", allow_bool: bool = True) -> np.ndarray:
    """Return ``X`` as a 2-D numeric array without copying or reading it (a np.memmap stays one).

    Raises :class:`HarmonizerInputError` naming the dtype or shape when ``X`` is not numeric or not
    (n_scans, n_features), and ``TypeError`` for sparse matrices (maps are dense).
    """
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise TypeError(f"{name} is a sparse matrix; sparse data is not supported: pass a dense array "
                        "(X.toarray()), NaN for missing values")
    arr = X if isinstance(X, np.ndarray) else np.asarray(X)
    if arr.dtype.kind == "c":
        raise HarmonizerInputError(f"Complex data not supported: {name} has dtype {arr.dtype}; expected real numbers")
    if arr.dtype.kind not in ("fiub" if allow_bool else "fiu"):
        raise HarmonizerInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise HarmonizerInputError(
            f"{name} must be 2-D (n_scans, n_features), got shape {arr.shape}. Reshape your data: "
            "a single feature with X[:, None], a single scan with X[None, :]")
    return arr


def check_not_empty(X: np.ndarray, name: str = "X") -> np.ndarray:
    """Refuse a matrix without scans or without features."""
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise HarmonizerInputError(f"{name} is empty: {X.shape[0]} scan(s) and {X.shape[1]} feature(s) "
                                   f"(shape={X.shape}) while a minimum of 1 is required.")
    return X


def check_n_features(estimator: "Harmonizer", X, advice: str = "use the same vertices/ROIs, in the same order"):
    """Refuse ``X`` whose number of features differs from what ``estimator`` was fitted on."""
    expected = estimator.n_features_in_
    if X.shape[1] != expected:
        raise HarmonizerInputError(f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
                                   f"{expected} features as input (the number it was fitted on); {advice}")


def check_data(X, *, name: str = "X", dtype=None, allow_nan: bool = True) -> np.ndarray:
    """Return ``X`` as a 2-D float array (n_scans, n_features).

    A 1-D input is refused (ambiguous: one scan or one feature?); inf is always refused; NaN only
    when ``allow_nan`` is False. ``dtype`` None keeps float32/float64 and casts anything else to
    float64.
    """
    arr = check_not_empty(check_matrix_shape(X, name=name), name)
    if dtype is None:
        dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    arr = arr.astype(dtype, copy=False)
    if np.isinf(arr).any():
        rows, cols = np.nonzero(np.isinf(arr))
        raise HarmonizerInputError(
            f"{name} holds inf at scan {rows[0]}, feature {cols[0]} ({len(rows)} values); use NaN for missing values")
    if not allow_nan and np.isnan(arr).any():
        rows, cols = np.nonzero(np.isnan(arr))
        raise HarmonizerInputError(f"{name} holds NaN at scan {rows[0]}, feature {cols[0]}; "
                                   "this method needs complete data")
    return arr


def check_sites(sites, n_scans: int) -> np.ndarray:
    """Return site labels as a 1-D object array of length ``n_scans`` (str or int labels kept as given)."""
    arr = np.asarray(sites, dtype=object)
    if arr.ndim != 1:
        raise HarmonizerInputError(f"sites must be 1-D (one label per scan), got shape {arr.shape}")
    if arr.shape[0] != n_scans:
        raise HarmonizerInputError(f"sites has {arr.shape[0]} labels but X has {n_scans} scans; "
                                   "expected one label per scan")
    missing = [i for i, s in enumerate(arr) if s is None or (isinstance(s, float) and np.isnan(s))]
    if missing:
        raise HarmonizerInputError(f"sites has missing labels at scans {missing[:5]}; every scan needs a site")
    return arr


# -- model files of 0.1.0 callers: npz + JSON (kept names) ---------------------------------------------

def save_state(path, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write ``arrays`` and ``metadata`` into one ``.npz`` file atomically (see :mod:`surfharm.io.model_files`)."""
    return model_files.write_npz(path, arrays, metadata)


def load_state(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_state`: ``(arrays, metadata)``; never unpickles."""
    return model_files.read_npz(path)


json_default = model_files.json_default


def side_data_for(method, **available) -> dict[str, Any]:
    """The side data ``method`` (a harmonizer or its class) takes, picked from ``available``.

    ``available`` holds what the caller has (e.g. ``covariates=..., subjects=...``; None values count
    as missing). Names the method does not declare are left out; a required one that is missing
    raises :class:`HarmonizerInputError` naming it.
    """
    cls = method if isinstance(method, type) else type(method)
    missing = [n for n in cls.required_side_data if available.get(n) is None]
    if missing:
        raise HarmonizerInputError(f"method {cls.registry_name or cls.__name__!r} needs {', '.join(missing)} "
                                   "(one value per scan)")
    return {n: available[n] for n in cls.side_data if available.get(n) is not None}
