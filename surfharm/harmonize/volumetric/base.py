"""How volumetric harmonizers take images, on the one harmonizer protocol.

Every volumetric method subclasses :class:`surfharm.harmonize.base.Harmonizer` through
:class:`VolumeHarmonizer` and accepts its scans ``X`` in either of two forms:

1. **volumes**: a sequence of 3-D volumes (paths to ``.nii``/``.nii.gz`` files, nibabel images or
   arrays) with ``masks=`` a sequence of brain masks of the same length, one mask for every scan,
   or None (a foreground mask is then derived from each skull-stripped volume, see
   :func:`surfharm.io.nifti.derive_mask`). ``transform`` returns a list of float32 3-D arrays,
   one per scan, on the input's grid.
2. **matrix**: a 2-D array ``(n_scans, n_voxels)`` whose row ``i`` holds scan ``i``'s voxels
   (NaN = outside its brain mask), as ``surfharm benchmark`` and :mod:`surfharm.evaluate` pass
   features. ``transform`` returns an array of the same shape and NaN pattern.

The calls are those of every harmonizer: ``fit(X, y=None, *, sites=None, masks=None, ...)``,
``transform(X, *, sites=None, masks=None)`` and ``transform_iter`` likewise, all side data by
keyword. ``masks`` is per-scan side data (declared in :attr:`VolumeHarmonizer.side_data`, so a
scikit-learn pipeline routes it with the scans). ``sites`` is optional for the per-scan methods
(they learn no site parameter: ``requires_sites = False``) and required by voxel-wise ComBat.
State is saved with :meth:`~surfharm.harmonize.base.Harmonizer.save` into one ``.npz`` file with
JSON metadata and read back with :func:`surfharm.harmonize.load`.

Two families live on this base:

- :class:`IntensityMapHarmonizer`: one monotone intensity function per scan (z-score, global
  scaling, WhiteStripe, Nyul, MICA). It streams: one volume in memory at a time.
- voxel-wise methods (RAVEL, voxel-wise ComBat): every scan on one grid; they read the in-mask
  voxels of all scans into one float32 matrix ``(n_scans, n_voxels)`` (200 scans x 235k voxels at
  2 mm = 190 MB) and work on it in chunks of voxels.

Deep volumetric methods (DeepHarmony, CALAMITI, ImUnity, MISPEL, MURD, DeepComBat) subclass
:class:`VolumeHarmonizer` the same way: they get the volumes form with masks and sites, keep their
torch modules under ``surfharm/models/`` and their weights in safetensors with JSON metadata.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from surfharm.harmonize.base import (
    Harmonizer,
    HarmonizerInputError,
    StateCheck,
    check_data,
    check_sites,
)
from surfharm.io.nifti import (
    Volume,
    VolumeInputError,
    check_finite_in_mask,
    derive_mask,
    load_mask,
    load_volume,
)

IntensityMap = Callable[[np.ndarray], np.ndarray]


@dataclass
class Scans:
    """The scans given to ``fit``/``transform``, read lazily (one volume in memory at a time).

    Either ``sources`` (volumes form: paths/images/arrays, with ``mask_sources``) or ``matrix``
    (``(n_scans, n_voxels)``, NaN outside each scan's mask) is set.
    """

    sources: Sequence | None = None
    mask_sources: Sequence | None = None
    matrix: np.ndarray | None = None
    shared_mask: bool = False
    _shared_mask_volume: Volume | None = None

    @property
    def is_matrix(self) -> bool:
        return self.matrix is not None

    def __len__(self) -> int:
        return len(self.matrix) if self.is_matrix else len(self.sources)

    def name(self, i: int) -> str:
        """How messages name scan ``i``: its file path, or its position."""
        if self.is_matrix:
            return f"row {i} of X"
        src = self.sources[i]
        return str(src) if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__") else f"volume {i}"

    def volume(self, i: int) -> tuple[Volume, np.ndarray]:
        """Scan ``i`` as ``(Volume, mask)`` (volumes form only); masks are validated against it."""
        vol = load_volume(self.sources[i], name=self.name(i))
        mask_src = self.mask_sources[i] if self.mask_sources is not None else None
        if mask_src is not None and self.shared_mask:
            # One mask file for every scan: read it once, still check it against each scan.
            if self._shared_mask_volume is None:
                self._shared_mask_volume = load_volume(mask_src)
            mask_src = self._shared_mask_volume
        mask = derive_mask(vol) if mask_src is None else load_mask(mask_src, vol)
        check_finite_in_mask(vol, mask)
        return vol, mask

    def values(self, i: int) -> np.ndarray:
        """In-mask intensities of scan ``i``, float64, 1-D."""
        if self.is_matrix:
            row = self.matrix[i]
            vals = row[~np.isnan(row)].astype(np.float64)
            if vals.size == 0:
                raise VolumeInputError(f"{self.name(i)} has no finite value; expected the voxels of one scan")
            return vals
        vol, mask = self.volume(i)
        return vol.data[mask].astype(np.float64)


def as_scans(X, masks=None) -> Scans:
    """Recognise the input form (see the module docstring) and check the masks' count."""
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise VolumeInputError("X is a sparse matrix; sparse data is not supported: pass a dense (n_scans, n_voxels) "
                               "array with NaN outside each scan's mask, or a list of volumes")
    if hasattr(X, "__array__") and not isinstance(X, (np.ndarray, str, bytes)) and not hasattr(X, "dataobj"):
        X = np.asarray(X)                      # array-likes (e.g. a DataFrame) as the matrix form
    if isinstance(X, np.ndarray) and X.ndim == 2:
        if masks is not None:
            raise VolumeInputError("masks apply to a list of volumes; in a 2-D X (n_scans, n_voxels) mark "
                                   "voxels outside a scan's mask with NaN instead")
        return Scans(matrix=check_data(X, name="X"))
    if isinstance(X, np.ndarray) and X.ndim == 3:
        raise VolumeInputError(f"X is one 3-D array of shape {X.shape}; pass a list of volumes, e.g. [volume]")
    if isinstance(X, (str, bytes)) or not isinstance(X, Sequence) and not isinstance(X, np.ndarray):
        raise VolumeInputError("X must be a list of volumes (paths, nibabel images or 3-D arrays) or a 2-D "
                               f"array (n_scans, n_voxels); got {type(X).__name__}")
    sources = list(X)
    if not sources:
        raise VolumeInputError("X holds no scan; expected at least one volume")
    mask_sources, shared = mask_sources_for(masks, len(sources), "volume")
    return Scans(sources=sources, mask_sources=mask_sources, shared_mask=shared)


def mask_sources_for(masks, n: int, noun: str) -> tuple[list | None, bool]:
    """One mask source per scan and whether one mask serves all: ``masks`` is None, a single mask (path,
    image or array) or one per scan (``noun`` names them in the error for a wrong count)."""
    if masks is None:
        return None, False
    if _is_single_mask(masks):
        return [masks] * n, True
    mask_sources = list(masks)
    if len(mask_sources) != n:
        raise VolumeInputError(f"got {len(mask_sources)} masks for {n} {noun}s; expected one mask per {noun}, or "
                               "a single mask for all")
    return mask_sources, False


def _is_single_mask(masks) -> bool:
    if isinstance(masks, (str, bytes)) or hasattr(masks, "__fspath__") or hasattr(masks, "dataobj"):
        return True
    return isinstance(masks, np.ndarray) and masks.ndim == 3


def optional_sites(sites, n_scans: int) -> np.ndarray | None:
    """Site labels checked against the number of scans, or None when not given."""
    return None if sites is None else check_sites(sites, n_scans)


class VolumeHarmonizer(Harmonizer):
    """Base of the volumetric harmonizers: input forms and the fitted-state plumbing (module docstring).

    Subclasses store their learned state in attributes ending in ``_``, name the one that marks a
    fit in :attr:`fitted_attribute`, and describe their state for the model file with
    ``_get_state`` / ``_set_state`` (calling this class's first: it keeps the numbers of training scans
    and of matrix columns).
    """

    side_data: ClassVar[tuple[str, ...]] = ("masks",)
    fitted_attribute: ClassVar[str] = "n_scans_fit_"
    #: False for methods that learn nothing (z-score, WhiteStripe): they transform without a fit.
    needs_fit: ClassVar[bool] = True

    def check_is_fitted(self, attribute: str | None = None) -> None:
        """Raise :class:`~surfharm.harmonize.NotFittedError` unless fitted (methods that learn nothing pass)."""
        if self.needs_fit:
            super().check_is_fitted(attribute)

    def __sklearn_is_fitted__(self) -> bool:
        return not self.needs_fit or super().__sklearn_is_fitted__()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = self.needs_fit
        return tags

    # -- the matrix form's columns ----------------------------------------------------------------
    def _remember_features(self, scans: Scans) -> None:
        """``n_features_in_``: the number of voxels (columns) of a matrix given to ``fit``; None for volumes."""
        self.n_features_in_ = scans.matrix.shape[1] if scans.is_matrix else None

    def _check_features(self, scans: Scans) -> None:
        """Refuse a matrix whose number of voxels differs from the one ``fit`` saw, naming both."""
        expected = getattr(self, "n_features_in_", None)
        if scans.is_matrix and expected is not None and scans.matrix.shape[1] != expected:
            raise VolumeInputError(f"X has {scans.matrix.shape[1]} features, but {type(self).__name__} is expecting "
                                   f"{expected} features as input (voxels, the columns it was fitted on): give the "
                                   "voxels of the same grid, in the same order")

    # -- model files ------------------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        meta = {"n_scans_fit": int(getattr(self, "n_scans_fit_", 0))}
        if getattr(self, "n_features_in_", None) is not None:
            meta["n_features"] = int(self.n_features_in_)
        return {}, meta

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.n_scans_fit_ = int(meta.get("n_scans_fit", 0))
        self.n_features_in_ = int(meta["n_features"]) if meta.get("n_features") is not None else None


class IntensityMapHarmonizer(VolumeHarmonizer):
    """A method that maps each scan's intensities through one monotone function of intensity.

    ``fit`` streams over the training scans once, keeps a small summary of each
    (:meth:`_summarize`), and learns the population state from the summaries
    (:meth:`_fit_summaries`). ``transform`` derives each scan's function from that scan's own
    in-mask intensities (:meth:`_scan_map`) and applies it to every voxel of the volume (inside
    and outside the mask, as the intensity-normalization package does) or to every finite value
    of a matrix row. Sites are checked when given but not used.
    """

    requires_sites: ClassVar[bool] = False

    def _summarize(self, values: np.ndarray, name: str) -> np.ndarray | None:
        """A small per-scan summary used by :meth:`_fit_summaries` (None: nothing to learn)."""
        return None

    def _fit_summaries(self, summaries: list) -> None:
        """Learn the population state from the training scans' summaries."""

    def _scan_map(self, values: np.ndarray, name: str) -> IntensityMap:
        """The intensity function of one scan, from its in-mask intensities ``values`` (1-D)."""
        raise NotImplementedError

    def intensity_map(self, values: np.ndarray, name: str = "scan") -> IntensityMap:
        """The fitted intensity function of the scan whose in-mask intensities are ``values`` (1-D)."""
        self.check_is_fitted()
        return self._scan_map(np.asarray(values, dtype=np.float64), name)

    def fit(self, X, y=None, *, sites=None, masks=None) -> "IntensityMapHarmonizer":
        """Learn from the scans ``X`` (volumes with ``masks``, or a matrix); ``sites`` are checked, not used."""
        scans = as_scans(X, masks)
        optional_sites(sites, len(scans))
        self._fit_summaries([self._summarize(scans.values(i), scans.name(i)) for i in range(len(scans))])
        self.n_scans_fit_ = len(scans)
        self._remember_features(scans)
        return self

    def transform(self, X, *, sites=None, masks=None):
        """Harmonized scans: a list of float32 3-D arrays (volumes form) or an array (matrix form)."""
        self.check_is_fitted()
        scans = as_scans(X, masks)
        optional_sites(sites, len(scans))
        self._check_features(scans)
        if scans.is_matrix:
            out = np.full_like(scans.matrix, np.nan)
            for i in range(len(scans)):
                finite = ~np.isnan(scans.matrix[i])
                fmap = self._scan_map(scans.values(i), scans.name(i))
                out[i, finite] = fmap(scans.matrix[i, finite].astype(np.float64))
            return out
        return list(self.transform_iter(X, sites=sites, masks=masks))

    def transform_iter(self, X, *, sites=None, masks=None) -> Iterator[np.ndarray]:
        """As :meth:`transform` for the volumes form, one volume at a time (read, map, yield)."""
        self.check_is_fitted()
        scans = as_scans(X, masks)
        optional_sites(sites, len(scans))
        for i in range(len(scans)):
            yield self.transform_volume(*scans.volume(i))

    def transform_volume(self, volume: Volume, mask: np.ndarray) -> np.ndarray:
        """Harmonize one loaded volume (float32 3-D array out); used by ``transform`` and the CLI."""
        self.check_is_fitted()
        fmap = self._scan_map(volume.data[mask].astype(np.float64), volume.name)
        # Every map here sends NaN to NaN, so the whole volume goes through at once. The map runs in
        # float64: WhiteStripe divides by a narrow stripe's sd, where float32 would lose digits.
        return np.asarray(fmap(volume.data.astype(np.float64)), dtype=np.float32)


def check_increasing(check: StateCheck, name: str, values: np.ndarray, strict: bool = True) -> None:
    """Refuse a loaded sequence of landmarks or quantiles that is not increasing, naming the file."""
    from surfharm.errors import ModelFileError

    steps = np.diff(np.asarray(values, dtype=np.float64))
    if (steps <= 0).any() if strict else (steps < 0).any():
        raise ModelFileError(f"{check.path}: parameter {name!r} is not {'strictly ' if strict else ''}increasing; "
                             "the model is damaged: fit it again")


def positive_scale(value: float, name: str, what: str) -> float:
    """Refuse a zero (or NaN) spread, which would divide by zero, naming the scan."""
    if not np.isfinite(value) or value <= 0:
        raise VolumeInputError(f"{name}: {what} is {value}; the scan's intensities inside the mask are constant "
                               "or the mask is wrong")
    return float(value)


__all__ = ["Scans", "as_scans", "VolumeHarmonizer", "IntensityMapHarmonizer", "HarmonizerInputError",
           "check_increasing", "positive_scale", "optional_sites"]
