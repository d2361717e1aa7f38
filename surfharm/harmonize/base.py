"""The harmonizer protocol shared by ComBat, S2SGAN and the volumetric adapters.

Every harmonizer follows scikit-learn's estimator contract:

- ``__init__`` only stores its keyword arguments (no validation, no work);
- ``fit(X, sites, covariates=None, **kwargs) -> self`` learns state whose names end in ``_``;
- ``transform(X, sites, covariates=None) -> X_harmonized`` checks it was fitted and that the
  features and sites match what ``fit`` saw, naming the offending value when they don't;
- ``fit_transform`` = ``fit`` then ``transform`` on the same data;
- ``save(path)`` / ``Cls.load(path)`` use ``.npz`` (arrays) + JSON (metadata): never pickle.

``X`` is ``(n_scans, n_features)`` float: vertices of an icosahedral map, ROIs or voxels;
NaN marks a missing value or a vertex outside cortex. ``sites`` is a length-``n_scans`` sequence of
site labels (str or int). ``covariates`` is a pandas DataFrame, an array or None.

Harmonizers register themselves by name (:func:`register`) so that ``surfharm benchmark`` and
``surfharm report`` can treat every method alike (:func:`get`, :func:`available`).
"""
from __future__ import annotations

import json
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from surfharm._atomic import atomic_path

STATE_FORMAT_VERSION = 1

_REGISTRY: dict[str, type["Harmonizer"]] = {}
#: Built-in harmonizers whose modules load torch (seconds): imported the first time they are asked for.
_LAZY: dict[str, str] = {"s2sgan": "surfharm.harmonize.s2sgan"}


class NotFittedError(RuntimeError):
    """``transform``/``save`` called before ``fit``."""


class HarmonizerInputError(ValueError):
    """Input data that a harmonizer cannot use; the message names the value and what was expected."""


def register(name: str) -> Callable[[type["Harmonizer"]], type["Harmonizer"]]:
    """Class decorator: make a harmonizer available under ``name`` (e.g. ``"combat"``)."""

    def deco(cls: type[Harmonizer]) -> type[Harmonizer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"harmonizer name {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get(name: str) -> type["Harmonizer"]:
    """Return the harmonizer class registered as ``name``; the error lists the known names."""
    _import_builtin_harmonizers()
    if name not in _REGISTRY and name in _LAZY:
        import importlib

        importlib.import_module(_LAZY[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown harmonizer {name!r}; available: {', '.join(available())}") from None


def available() -> list[str]:
    """Names of every registered harmonizer, sorted."""
    _import_builtin_harmonizers()
    return sorted(set(_REGISTRY) | set(_LAZY))


def _import_builtin_harmonizers() -> None:
    # Importing the package registers the built-in methods (their modules call ``register``).
    import surfharm.harmonize  # noqa: F401


class Harmonizer(ABC):
    """Abstract base of every harmonizer (see the module docstring for the contract)."""

    registry_name: ClassVar[str] = ""

    @abstractmethod
    def fit(self, X, sites, covariates=None, **kwargs) -> "Harmonizer":
        """Learn the site effects from ``X`` (n_scans, n_features); return self."""

    @abstractmethod
    def transform(self, X, sites, covariates=None, **kwargs) -> np.ndarray:
        """Return ``X`` with site effects removed, same shape and NaN pattern as ``X``."""

    def fit_transform(self, X, sites, covariates=None, **kwargs) -> np.ndarray:
        """``fit`` then ``transform`` on the same data."""
        return self.fit(X, sites, covariates, **kwargs).transform(X, sites, covariates, **kwargs)

    # -- parameters (scikit-learn style) ---------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The keyword arguments given to ``__init__`` (read back from attributes)."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def check_is_fitted(self, attribute: str) -> None:
        """Raise :class:`NotFittedError` unless ``attribute`` (a learned ``*_`` name) is set."""
        if getattr(self, attribute, None) is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(X, sites, ...) first")


# -- validation helpers shared by all harmonizers -----------------------------------------------------

def check_matrix_shape(X, *, name: str = "X", allow_bool: bool = True) -> np.ndarray:
    """Return ``X`` as a 2-D numeric array without copying or reading it (a np.memmap stays one).

    Raises :class:`HarmonizerInputError` naming the dtype or shape when ``X`` is not numeric or not
    (n_scans, n_features).
    """
    arr = X if isinstance(X, np.ndarray) else np.asarray(X)
    if arr.dtype.kind not in ("fiub" if allow_bool else "fiu"):
        raise HarmonizerInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise HarmonizerInputError(
            f"{name} must be 2-D (n_scans, n_features), got shape {arr.shape}; "
            "reshape a single feature with X[:, None] or a single scan with X[None, :]")
    return arr


def check_data(X, *, name: str = "X", dtype=None, allow_nan: bool = True) -> np.ndarray:
    """Return ``X`` as a 2-D float array (n_scans, n_features).

    A 1-D input is refused (ambiguous: one scan or one feature?); inf is always refused; NaN only
    when ``allow_nan`` is False. ``dtype`` None keeps float32/float64 and casts anything else to
    float64.
    """
    arr = check_matrix_shape(X, name=name)
    if dtype is None:
        dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    arr = arr.astype(dtype, copy=False)
    if np.isinf(arr).any():
        rows, cols = np.nonzero(np.isinf(arr))
        raise HarmonizerInputError(
            f"{name} holds inf at scan {rows[0]}, feature {cols[0]} ({len(rows)} values); use NaN for missing values")
    if not allow_nan and np.isnan(arr).any():
        rows, cols = np.nonzero(np.isnan(arr))
        raise HarmonizerInputError(f"{name} holds NaN at scan {rows[0]}, feature {cols[0]}; this method needs complete data")
    return arr


def check_sites(sites, n_scans: int) -> np.ndarray:
    """Return site labels as a 1-D object array of length ``n_scans`` (str or int labels kept as given)."""
    arr = np.asarray(sites, dtype=object)
    if arr.ndim != 1:
        raise HarmonizerInputError(f"sites must be 1-D (one label per scan), got shape {arr.shape}")
    if arr.shape[0] != n_scans:
        raise HarmonizerInputError(f"sites has {arr.shape[0]} labels but X has {n_scans} scans; expected one label per scan")
    missing = [i for i, s in enumerate(arr) if s is None or (isinstance(s, float) and np.isnan(s))]
    if missing:
        raise HarmonizerInputError(f"sites has missing labels at scans {missing[:5]}; every scan needs a site")
    return arr


# -- state files: npz (arrays) + JSON (metadata), never pickle -----------------------------------------

def save_state(path, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write ``arrays`` and ``metadata`` into one ``.npz`` file atomically.

    The metadata is stored as a UTF-8 JSON member ``metadata.json`` inside the npz archive so
    that the model is a single file; arrays are plain numeric arrays (object arrays are refused so
    that loading never needs pickle).
    """
    import surfharm

    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"model file {path} must end in .npz")
    meta = {"format_version": STATE_FORMAT_VERSION, "surfharm_version": surfharm.__version__, **metadata}
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"array {key!r} has dtype object; store labels in the metadata instead")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr("metadata.json", json.dumps(meta, indent=2, sort_keys=True, default=json_default))
    return path


def load_state(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_state`: ``(arrays, metadata)``; never unpickles."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("metadata.json").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path} is not a surfharm model file (npz with metadata.json): {exc}") from None
    if meta.get("format_version") != STATE_FORMAT_VERSION:
        raise ValueError(f"{path} has model format version {meta.get('format_version')}; "
                         f"this surfharm reads version {STATE_FORMAT_VERSION}")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "metadata.json"}
    return arrays, meta


def json_default(obj):
    """``json.dumps(default=...)`` for model metadata: numpy scalars and arrays become Python values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in model metadata")
