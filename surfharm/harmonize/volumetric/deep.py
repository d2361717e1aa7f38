"""The base of the slice-based deep image harmonizers: :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`.

A deep image method (DeepHarmony, MISPEL, CALAMITI/HACA3, ImUnity, MURD) learns 2-D (or 2.5-D)
networks on slices of whole volumes. This base does everything but the networks and their losses:

Input
    ``X`` is a list of scans. Each scan is one volume (a path to a NIfTI file, a nibabel image or a
    3-D array; it is the contrast ``contrasts[0]``) or a dict ``{contrast name: volume}`` holding every
    contrast of ``contrasts`` (the parameter, e.g. ``("t1", "t2", "flair")``), all on one grid.
    ``masks=`` one brain mask per scan, one for all, or None (derived from the scan's first contrast,
    :func:`surfharm.io.nifti.derive_mask`); ``sites=`` one label per scan (required);
    ``subjects=`` one label per scan (required by paired methods: the same label on several sites is
    one person scanned on each, a traveling subject). ``covariates=`` (optional) one row of numbers per
    scan (e.g. age, sex coded 0/1), checked by :func:`image_covariates` and handed to the trainer
    (``SliceData.scan_covariates``); a method uses them only if it declares ``"covariates"`` in its
    ``side_data`` (ImUnity's biological-preservation module), the others ignore them. The
    ``(n_scans, n_voxels)`` matrix form of the other volumetric methods is refused: slices need the voxel grid.

Intensities
    Each contrast of each scan is divided by its own in-mask 99th percentile (``percentile``), so tissue
    lies in about [0, 1] (:mod:`surfharm.harmonize.volumetric.slices`). The networks work in that unit.
    A harmonized scan is put into the *target site's* unit: multiplied, per contrast, by the median of
    the factors of the target site's training scans (``site_scale_``).

fit
    loads and normalises every scan, cuts it into slices along ``slice_axis`` with ``context``
    neighbours each side as channels (training slices are held in memory as float32:
    ``n_slices x n_contrasts x (2 context + 1) x H x W x 4`` bytes), builds the method's networks
    (:meth:`DeepImageHarmonizer.build_networks`, seeded) and trains them with the method's trainer
    (:meth:`DeepImageHarmonizer.make_trainer`, a :class:`SliceTrainer`: checkpoints, exact resume,
    the stop on a non-finite loss, progress bar, device choice and DistributedDataParallel come from
    :class:`surfharm.training.trainer.Trainer`).

transform / transform_iter
    scan by scan: slices, :meth:`DeepImageHarmonizer.map_slices` from the scan's site to the target
    (``target_site``: the parameter, or the keyword of ``transform`` for methods that can map to any
    site, default the first training site in sorted order), slices put back on the scan's grid, 0
    outside the mask, times the target's unit. Returns the form given: a float32 3-D array per plain
    scan, a dict ``{contrast: array}`` per dict scan. Scans of the target site are returned unchanged
    (as read, float32): they are already in the target's appearance, and a network's reconstruction
    of them would only add its error.

Model files
    ``.safetensors``: the networks' weights (``networks.<name>.<parameter>``) and ``site_scale``, with
    JSON metadata (format, sites, target, contrasts, the networks' configuration, history), written by
    :meth:`~surfharm.harmonize.base.Harmonizer.save` and read by :func:`surfharm.harmonize.load`.

Writing a method: subclass :class:`DeepImageHarmonizer`, register it, set the class attributes
(:attr:`~DeepImageHarmonizer.model_format`, :attr:`~DeepImageHarmonizer.needs_pairs`,
:attr:`~DeepImageHarmonizer.min_contrasts`, :attr:`~DeepImageHarmonizer.supports_unseen_sites`,
:attr:`~DeepImageHarmonizer.maps_to_any_site`), list every parameter in ``__init__`` (scikit-learn
reads them from its signature) and implement :meth:`~DeepImageHarmonizer.network_config`,
:meth:`~DeepImageHarmonizer.build_networks`, :meth:`~DeepImageHarmonizer.make_trainer` and
:meth:`~DeepImageHarmonizer.map_slices`; see :mod:`surfharm.harmonize.volumetric.deep_harmony`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from surfharm.harmonize._networks import check_weights, load_weights
from surfharm.harmonize.base import HarmonizerInputError, StateCheck, check_sites, require_sites
from surfharm.harmonize.volumetric import slices as sl
from surfharm.harmonize.volumetric.base import VolumeHarmonizer, mask_sources_for
from surfharm.io.nifti import (AFFINE_ATOL, Volume, VolumeInputError, check_finite_in_mask, derive_mask, load_mask,
                               load_volume)
from surfharm.training.config import check_run_settings
from surfharm.training.trainer import Trainer

# -- the scans -------------------------------------------------------------------------------------------------


@dataclass
class ImageScans:
    """The scans given to a deep image method, read lazily (one scan in memory at a time).

    ``sources[i]`` maps every contrast to its volume source; ``as_dict[i]`` says whether scan ``i``
    came as a dict (its output is one too).
    """

    sources: list[dict[str, Any]]
    as_dict: list[bool]
    contrasts: tuple[str, ...]
    mask_sources: list | None = None
    shared_mask: bool = False
    _shared_mask: Volume | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def name(self, i: int) -> str:
        """How messages name scan ``i``: the path of its first contrast, or its position."""
        src = self.sources[i][self.contrasts[0]]
        return f"scan {i} ({src})" if isinstance(src, (str, os.PathLike)) else f"scan {i}"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Scan ``i`` as ``(data (C, X, Y, Z) float32, mask (X, Y, Z) bool, affine or None)``, checked."""
        vols = [load_volume(self.sources[i][c], name=f"{self.name(i)}, contrast {c!r}") for c in self.contrasts]
        ref = vols[0]
        for vol in vols[1:]:
            same_affine = vol.affine is None or ref.affine is None or np.allclose(vol.affine, ref.affine,
                                                                                   atol=AFFINE_ATOL)
            if vol.data.shape != ref.data.shape or not same_affine:
                raise VolumeInputError(f"{vol.name} is not on the grid of {ref.name} (shape {vol.data.shape} vs "
                                       f"{ref.data.shape}); register every contrast of a scan to one grid first")
        mask_src = None if self.mask_sources is None else self.mask_sources[i]
        if mask_src is not None and self.shared_mask:
            if self._shared_mask is None:        # one mask for every scan: read once, checked against each scan
                self._shared_mask = load_volume(mask_src)
            mask_src = self._shared_mask
        mask = derive_mask(ref) if mask_src is None else load_mask(mask_src, ref)
        for vol in vols:
            check_finite_in_mask(vol, mask)
        return np.stack([v.data for v in vols]), mask, ref.affine


def image_scans(X, masks, contrasts: tuple[str, ...], owner: str) -> ImageScans:
    """Recognise ``X`` (module docstring) and check every scan's contrasts and the masks' count."""
    if hasattr(X, "toarray") and hasattr(X, "nnz") or isinstance(X, np.ndarray) and X.ndim == 2 or (
            hasattr(X, "__array__") and hasattr(X, "columns")):
        raise VolumeInputError(f"{owner} learns from 2-D slices of whole volumes, so it cannot take a matrix "
                               "(n_scans, n_voxels): pass a list of volumes (paths, nibabel images or 3-D arrays), "
                               "or of dicts {contrast: volume} for several contrasts")
    if isinstance(X, np.ndarray) and X.ndim == 3:
        raise VolumeInputError(f"X is one 3-D array of shape {X.shape}; pass a list of volumes, e.g. [volume]")
    if isinstance(X, (str, bytes, Mapping)) or not isinstance(X, (Sequence, np.ndarray)):
        raise VolumeInputError(f"{owner}: X must be a list of scans (volumes, or dicts {{contrast: volume}}); got "
                               f"{type(X).__name__}")
    if len(X) == 0:
        raise VolumeInputError("X holds no scan; expected at least one volume")
    sources, as_dict = [], []
    for i, scan in enumerate(X):
        if isinstance(scan, Mapping):
            missing = [c for c in contrasts if c not in scan]
            if missing:
                raise VolumeInputError(f"scan {i} has no contrast {missing[0]!r}; {owner} was given contrasts="
                                       f"{contrasts} and the scan holds {sorted(map(str, scan))}")
            unknown = sorted(str(c) for c in scan if c not in contrasts)
            if unknown:
                raise VolumeInputError(f"scan {i} holds contrast(s) {unknown} not in contrasts={contrasts}; add them "
                                       "to contrasts or leave them out of the scan")
            sources.append({c: scan[c] for c in contrasts})
            as_dict.append(True)
        else:
            if len(contrasts) > 1:
                raise VolumeInputError(f"scan {i} is a single volume, but {owner} takes contrasts {contrasts}: pass "
                                       "each scan as a dict {contrast: volume}")
            sources.append({contrasts[0]: scan})
            as_dict.append(False)
    mask_sources, shared = mask_sources_for(masks, len(sources), "scan")
    return ImageScans(sources=sources, as_dict=as_dict, contrasts=tuple(contrasts), mask_sources=mask_sources,
                      shared_mask=shared)


#: What pandas infers for an object column of numbers (accepted as covariates).
_NUMBER_KINDS = ("integer", "floating", "mixed-integer-float", "boolean", "decimal", "empty")


def image_covariates(covariates, n_scans: int) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """Per-scan covariates checked: ``(values (n_scans, n_covariates) float64, column names)``; ``(None, ())``
    for None.

    ``covariates`` is a pandas DataFrame (or Series) of numbers, or an array-like ``(n_scans, n_covariates)``
    (1-D: one covariate; columns named ``x0, x1, ...``); booleans count as 0/1. Raises
    :class:`HarmonizerInputError` naming the expected and given row counts, or the column that holds a
    non-numeric, missing (NaN) or infinite value.
    """
    if covariates is None:
        return None, ()
    if isinstance(covariates, pd.Series):
        covariates = covariates.to_frame()
    if isinstance(covariates, pd.DataFrame):
        table = covariates.reset_index(drop=True)
    else:
        arr = np.asarray(covariates)
        arr = arr[:, None] if arr.ndim == 1 else arr
        if arr.ndim != 2:
            raise HarmonizerInputError(f"covariates must be 2-D (n_scans, n_covariates), got shape {arr.shape}")
        table = pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])
    if len(table) != n_scans:
        raise HarmonizerInputError(f"covariates have {len(table)} rows but X has {n_scans} scans; expected one row "
                                   f"per scan ({n_scans})")
    if table.shape[1] == 0:
        raise HarmonizerInputError("covariates have no column; give at least one (e.g. age), or None")
    columns = []
    for name in table.columns:
        col = table[name]
        numeric = pd.api.types.is_numeric_dtype(col) or (
            col.dtype == object and pd.api.types.infer_dtype(col, skipna=True) in _NUMBER_KINDS)
        if not numeric:
            bad = next((v for v in col if not isinstance(v, (int, float, np.number, bool, np.bool_))), col.iloc[0])
            raise HarmonizerInputError(f"covariate {str(name)!r} is not numeric (dtype {col.dtype}, e.g. {bad!r}); "
                                       "code it as numbers (e.g. sex as 0/1)")
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise HarmonizerInputError(f"covariate {str(name)!r} is missing (NaN) or infinite at scans "
                                       f"{bad[:5].tolist()} ({bad.size} in all); every scan needs a value")
        columns.append(values)
    return np.stack(columns, axis=1), tuple(str(c) for c in table.columns)


# -- training slices ---------------------------------------------------------------------------------------------


@dataclass
class SliceData:
    """The training slices of every scan (CPU tensors) and where each comes from.

    Attributes
    ----------
    images : (N, C * (2 context + 1), H, W) float32, normalised, 0 outside the mask (channel order:
        :mod:`surfharm.harmonize.volumetric.slices`).
    masks : (N, H, W) bool.
    sites : (N,) int64 site index (in the harmonizer's ``sites_``).
    scans : (N,) int64 index of the scan in the list given to ``fit``.
    positions : (N,) int64 position of the slice along the slicing axis.
    centre : (C,) int64 channels of each contrast's own slice
        (:func:`~surfharm.harmonize.volumetric.slices.centre_channels`): ``images[:, centre]`` is the
        ``(N, C, H, W)`` target of a reconstruction.
    scan_sites : (n_scans,) int64 site index of every scan;  scan_subjects : (n_scans,) labels or None.
    n_sites : number of training sites;  target : index of the target site.
    scan_covariates : (n_scans, n_covariates) float64 covariates of every scan as given to ``fit``
        (``covariates=``, not standardised; row ``scans[r]`` is slice ``r``'s), or None when none were given.
    covariate_names : their column names (``()`` when none).
    """

    images: torch.Tensor
    masks: torch.Tensor
    sites: torch.Tensor
    scans: torch.Tensor
    positions: torch.Tensor
    centre: torch.Tensor
    scan_sites: np.ndarray
    scan_subjects: np.ndarray | None
    n_sites: int
    target: int
    scan_covariates: np.ndarray | None = None
    covariate_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def rows_of_site(self, site: int) -> np.ndarray:
        """Rows (slices) of the scans of site index ``site``."""
        return np.flatnonzero(self.sites.numpy() == site)

    def matched_rows(self, sites: Sequence[int]) -> np.ndarray:
        """Slices of the same subject at the same position on each of ``sites``: ``(n, len(sites))`` rows.

        For every subject scanned on all of ``sites`` (``subjects=`` given to ``fit``), its first scan
        on each site (in the order given to ``fit``) is taken, and every slice position present in all
        those scans gives one row of the result (column ``j``: the slice of site ``sites[j]``). Scans
        are matched voxel for voxel, so they must be co-registered (``fit`` checks that they share a
        grid shape).
        """
        if self.scan_subjects is None:
            return np.zeros((0, len(sites)), dtype=np.int64)
        scans, positions = self.scans.numpy(), self.positions.numpy()
        lookup = {(int(s), int(p)): r for r, (s, p) in enumerate(zip(scans, positions))}
        out = []
        for subject in pd.unique(self.scan_subjects):
            first = []
            for site in sites:
                hits = np.flatnonzero((self.scan_subjects == subject) & (self.scan_sites == site))
                if not hits.size:
                    break
                first.append(int(hits[0]))
            if len(first) != len(sites):
                continue
            common = set.intersection(*(set(positions[scans == s].tolist()) for s in first))
            out += [[lookup[(s, p)] for s in first] for p in sorted(common)]
        return np.asarray(out, dtype=np.int64).reshape(-1, len(sites))


# -- the training loop ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceTrainingConfig:
    """Everything that defines a slice-network training run (written into every checkpoint).

    Methods with further settings (loss weights) subclass it as another frozen dataclass; ``network``
    holds the method's :meth:`DeepImageHarmonizer.network_config` (JSON values).
    """

    in_channels: int
    out_channels: int
    n_sites: int
    target: int = 0
    network: dict = field(default_factory=dict)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 8
    epochs: int = 1
    max_steps: int | None = None
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.5
    lr_milestones: tuple[int, ...] = ()
    lr_factors: tuple[float, ...] = (1.0,)
    seed: int = 0
    amp: bool = True

    def __post_init__(self):
        check_run_settings(self, ("constant", "cosine", "step", "piecewise"),
                           ("batch_size", "epochs", "in_channels", "out_channels"), max_steps_name="max_steps (steps)")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))          # tuples -> lists, as the checkpoint stores them

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        values = dict(values)
        for f in fields(cls):
            if isinstance(values.get(f.name), list) and isinstance(f.default, tuple):
                values[f.name] = tuple(values[f.name])
        return cls(**values)


class SliceTrainer(Trainer):
    """The shared trainer of the slice networks, on :class:`~surfharm.training.trainer.Trainer`.

    Holds the method's networks (``networks``: an ``nn.ModuleDict``, on the trainer's device), their
    DistributedDataParallel wrappers (``ddp[name]``: call these in :meth:`train_step` so gradients
    are averaged across processes; without torchrun they are the networks themselves) and the
    optimizers (:meth:`build_optimizers`: one Adam over every network by default). A method sets
    ``checkpoint_format``, ``loss_names``, ``progress_desc``, ``progress_keys``, and implements
    :meth:`train_step` (which ends with ``self._finish_step(torch.stack(losses), lr)``); it may
    override :attr:`epoch_size` (default: every training slice) and :meth:`build_optimizers`.

    Parameters
    ----------
    config : SliceTrainingConfig (or a subclass)
    networks : nn.ModuleDict built by the harmonizer (weights seeded there).
    data : SliceData, the training slices.
    device, checkpoint_path, checkpoint_every, validate, checkpoint_extra, progress
        As :class:`surfharm.training.trainer.CycleGANTrainer`'s.
    """

    checkpoint_format = "surfharm-slices-checkpoint"
    loss_names: tuple[str, ...] = ("loss",)
    progress_desc = "training"
    progress_keys: tuple[str, ...] = ("loss",)

    def __init__(self, config: SliceTrainingConfig, networks: nn.ModuleDict, data: SliceData, *, device="cpu",
                 checkpoint_path=None, checkpoint_every: int = 0, validate=None, checkpoint_extra=None,
                 progress: bool = False):
        self._setup(config, device=device, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                    validate=validate, checkpoint_extra=checkpoint_extra, progress=progress)
        self.data = data
        self.networks = networks.to(self.device)
        self.networks.train()
        self.ddp = {name: self._wrap_distributed(module) for name, module in self.networks.items()}
        self.optimizers = self.build_optimizers()

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers by checkpoint prefix; default one Adam (``config.lr``, ``config.betas``) over all."""
        return {"opt": torch.optim.Adam(self.networks.parameters(), lr=self.config.lr, betas=self.config.betas)}

    @property
    def epoch_size(self) -> int:
        return len(self.data)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"networks": self.networks}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.optimizers

    def rows(self, step: int, pool: np.ndarray, stream: int = 0) -> np.ndarray:
        """This process's batch at ``step`` drawn from ``pool`` (row indices, or rows of a pair table):
        a fresh permutation of ``pool`` each epoch, a function of (seed, stream, epoch) only."""
        return np.asarray(pool)[self.batch_rows(step, len(pool), stream)]

    def batch(self, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images (B, C_in, H, W), masks (B, H, W), sites (B,))`` of slice ``rows`` on the device."""
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        d = self.data
        return d.images[rows].to(self.device), d.masks[rows].to(self.device), d.sites[rows].to(self.device)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over the mask: pred, target (B, C, H, W), mask (B, H, W) bool -> scalar."""
    weight = mask[:, None].to(pred.dtype).expand_as(pred)
    return ((pred.float() - target.float()).abs() * weight).sum() / weight.sum().clamp_min(1)


# -- the harmonizer ----------------------------------------------------------------------------------------------


class DeepImageHarmonizer(VolumeHarmonizer):
    """Base of the slice-based deep image harmonizers (see the module docstring).

    Common parameters (every subclass lists them in its ``__init__`` and passes them here)
    ----------------------------------------------------------------------------------------
    contrasts : tuple of str
        Names of the contrasts of every scan, e.g. ``("t1",)`` or ``("t1", "t2", "flair")``.
    target_site : site label or None
        The site scans are harmonized to; None: the first training site in sorted order.
    slice_axis : int
        Axis the volumes are sliced along (2: axial for RAS-oriented volumes).
    context : int
        Neighbour slices on each side given to the networks as extra channels (0: 2-D).
    percentile : float
        In-mask percentile that defines each contrast's intensity unit (see the module docstring).
    steps : int
        Optimisation steps.
    batch_size : int
        Slices per step (per source site for paired methods, as each documents), and per forward
        pass in ``transform``.
    lr : float
        Adam learning rate.
    seed : int
        Seed of the weights and of every batch draw: a fixed seed gives the same model on CPU.
    device : str
        "cpu" (default), "cuda", "cuda:1"...
    progress : bool
        Show a progress bar while training.
    checkpoint : path or None
        A ``.safetensors`` checkpoint written every ``checkpoint_every`` steps (0: at the end only);
        with ``resume=True`` an existing one is read first and training continues exactly where it
        stopped.

    Attributes
    ----------
    sites_ : list
        Training sites, sorted.
    target_ : int
        Index of the target in ``sites_``.
    contrasts_ : tuple of str
        The contrasts, in channel order.
    n_in_channels_ : int
        Channels of a slice, ``len(contrasts) * (2 context + 1)``.
    site_scale_ : ndarray, (n_sites, n_contrasts) float32
        Median intensity factor of each site's training scans.
    networks_ : torch.nn.ModuleDict
        The trained networks (eval mode).
    network_ : dict
        Their configuration (JSON, as saved).
    history_ : list of dict
        Per-epoch losses.
    n_pairs_ : int
        Matched slices trained on (paired methods; else 0).
    covariate_names_ : tuple of str
        Columns of the ``covariates`` given to ``fit`` (``()``: none).
    """

    #: Format name written in the model file (e.g. "surfharm-deepharmony"); every method sets its own.
    model_format: ClassVar[str] = ""
    #: Whether training needs traveling subjects (``subjects=``) shared by the target and every other site.
    needs_pairs: ClassVar[bool] = False
    #: Fewest contrasts per scan the method works with (``contrasts`` is checked against it).
    min_contrasts: ClassVar[int] = 1
    #: Whether ``transform`` can take scans of sites not seen in training (``map_slices`` gets source -1).
    supports_unseen_sites: ClassVar[bool] = False
    #: Whether ``transform(..., target_site=...)`` may pick any training site (else only the fitted target).
    maps_to_any_site: ClassVar[bool] = False
    #: The (n_scans, n_voxels) matrix form is refused: slices need the voxel grid.
    matrix_input: ClassVar[bool] = False

    side_data = ("masks", "subjects")
    model_suffix = ".safetensors"
    run_options = ("device", "progress", "checkpoint", "checkpoint_every", "resume")
    fitted_attribute = "networks_"

    def __init__(self, *, contrasts: tuple = ("t1",), target_site=None, slice_axis: int = 2, context: int = 0,
                 percentile: float = sl.DEFAULT_PERCENTILE, steps: int = 1000, batch_size: int = 8, lr: float = 1e-3,
                 seed: int = 0, device: str = "cpu", progress: bool = False, checkpoint=None,
                 checkpoint_every: int = 0, resume: bool = False):
        self.contrasts = contrasts
        self.target_site = target_site
        self.slice_axis = slice_axis
        self.context = context
        self.percentile = percentile
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.device = device
        self.progress = progress
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.resume = resume

    # -- hooks a method implements ------------------------------------------------------------------------
    def pad_depth(self) -> int:
        """Halvings of the method's networks: slices are padded to multiples of ``2 ** pad_depth()``."""
        return int(getattr(self, "depth", 0))

    def network_config(self) -> dict[str, Any]:
        """JSON-able description of the networks, from the parameters and what ``fit`` set before training
        (``contrasts_``, ``n_in_channels_``, ``sites_``, ``target_``); saved in the model file and given back
        to :meth:`build_networks` at load."""
        raise NotImplementedError(f"{type(self).__name__} does not implement network_config")

    def build_networks(self, config: dict[str, Any]) -> nn.ModuleDict:
        """The method's networks (all that ``transform`` or a checkpoint needs), freshly initialised."""
        raise NotImplementedError(f"{type(self).__name__} does not implement build_networks")

    def training_config(self, network: dict[str, Any]) -> SliceTrainingConfig:
        """The trainer's configuration; override to return a subclass with the method's loss weights."""
        return SliceTrainingConfig(in_channels=self.n_in_channels_, out_channels=len(self.contrasts_),
                                   n_sites=len(self.sites_), target=self.target_, network=network,
                                   lr=float(self.lr), batch_size=int(self.batch_size), max_steps=int(self.steps),
                                   seed=int(self.seed))

    def make_trainer(self, config: SliceTrainingConfig, networks: nn.ModuleDict, data: SliceData,
                     **run) -> SliceTrainer:
        """The method's :class:`SliceTrainer` subclass, built as ``Cls(config, networks, data, **run)``
        (``run``: device, checkpoint_path, checkpoint_every, checkpoint_extra, progress)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement make_trainer")

    def map_slices(self, networks: nn.ModuleDict, images: torch.Tensor, masks: torch.Tensor, source: int,
                   target: int) -> torch.Tensor:
        """Harmonize a batch of slices of site index ``source`` (-1: unseen) to site index ``target``.

        ``images`` (B, C_in, H, W) normalised, ``masks`` (B, H, W) bool, on the networks' device, under
        ``torch.no_grad`` with the networks in eval mode. Returns (B, C, H, W): every contrast of the
        slice itself (not its neighbours), in the normalised unit; values outside the mask are ignored.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement map_slices")

    def check_pairs(self, sites: np.ndarray, subjects: np.ndarray) -> None:
        """Refuse training data without the pairs the method learns from (paired methods only). Default:
        every site other than the target shares at least one subject with the target, named if not."""
        target = self.sites_[self.target_]
        on_target = {s for s, site in zip(subjects, sites) if site == target}
        lacking = [site for site in self.sites_ if site != target
                   and not on_target & {s for s, x in zip(subjects, sites) if x == site}]
        if lacking:
            raise HarmonizerInputError(
                f"{type(self).__name__} learns from traveling subjects, but site(s) {lacking} share no subject "
                f"with the target site {target!r} (subjects=, one label per scan: the same label on two sites is one "
                "person scanned on both)")

    # -- checks ---------------------------------------------------------------------------------------------
    def _owner(self) -> str:
        return type(self).__name__

    def _checked_contrasts(self) -> tuple[str, ...]:
        contrasts = (self.contrasts,) if isinstance(self.contrasts, str) else tuple(self.contrasts)
        if not contrasts or not all(isinstance(c, str) and c for c in contrasts) or len(set(contrasts)) != len(
                contrasts):
            raise HarmonizerInputError(f"contrasts must be distinct non-empty names, e.g. ('t1', 't2'); got "
                                       f"{self.contrasts!r}")
        if len(contrasts) < self.min_contrasts:
            raise HarmonizerInputError(f"{self._owner()} needs at least {self.min_contrasts} contrasts per scan; "
                                       f"contrasts={contrasts}")
        return contrasts

    def _check_params(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise HarmonizerInputError(f"{name} must be a positive int, got {value!r}")
        if self.slice_axis not in (0, 1, 2):
            raise HarmonizerInputError(f"slice_axis must be 0, 1 or 2, got {self.slice_axis!r}")
        if isinstance(self.context, bool) or not isinstance(self.context, (int, np.integer)) or self.context < 0:
            raise HarmonizerInputError(f"context must be an int >= 0, got {self.context!r}")
        if not 0 < float(self.percentile) <= 100:
            raise HarmonizerInputError(f"percentile must be in (0, 100], got {self.percentile!r}")

    def _subjects(self, subjects, n: int, needed: bool) -> np.ndarray | None:
        if subjects is None:
            if needed:
                raise HarmonizerInputError(
                    f"{self._owner()} learns from traveling subjects: give subjects=, one label per scan (the same "
                    "label on two sites is one person scanned on both)")
            return None
        arr = np.asarray(subjects, dtype=object)
        if arr.ndim != 1 or len(arr) != n:
            raise HarmonizerInputError(f"subjects has shape {arr.shape}; expected one label per scan ({n})")
        return check_sites(arr, n)              # same rules as site labels: 1-D, none missing

    def _site_index(self, label, where: str) -> int:
        if label not in self.sites_:
            raise HarmonizerInputError(f"{where} {label!r} is not a training site; the model has {self.sites_}")
        return self.sites_.index(label)

    # -- fit ------------------------------------------------------------------------------------------------
    def fit(self, X, y=None, *, sites=None, masks=None, subjects=None, covariates=None) -> "DeepImageHarmonizer":
        """Train on the scans ``X`` of two or more sites (module docstring); returns self. ``covariates``
        (optional, one row of numbers per scan) are checked and given to the trainer; only methods that
        declare them in ``side_data`` use them."""
        contrasts = self._checked_contrasts()
        self._check_params()
        scans = image_scans(X, masks, contrasts, self._owner())
        n = len(scans)
        sites = require_sites(sites, n, f"{self._owner()}.fit")
        subjects = self._subjects(subjects, n, self.needs_pairs)
        covariate_values, self.covariate_names_ = image_covariates(covariates, n)
        self.sites_ = sorted((_plain(s) for s in pd.unique(sites)), key=str)
        if len(self.sites_) < 2:
            raise HarmonizerInputError(f"{self._owner()} needs scans of at least 2 sites, got {self.sites_}")
        self.target_ = 0 if self.target_site is None else self._site_index(self.target_site, "target_site")
        if self.needs_pairs:
            self.check_pairs(sites, subjects)
        self.contrasts_ = contrasts
        self.n_in_channels_ = len(contrasts) * (2 * int(self.context) + 1)
        scan_sites = np.array([self.sites_.index(_plain(s)) for s in sites], dtype=np.int64)

        data, factors, shapes = self._training_slices(scans, scan_sites, subjects)
        data.scan_covariates, data.covariate_names = covariate_values, self.covariate_names_
        if self.needs_pairs:
            self._check_paired_grids(scans, scan_sites, subjects, shapes)
        # Each site's unit: the median factor of each contrast over its training scans (outputs go to the target's).
        self.site_scale_ = np.stack([np.median(factors[scan_sites == k], axis=0) for k in range(len(self.sites_))]
                                    ).astype(np.float32)
        network = json.loads(json.dumps(self.network_config()))      # as the model file will hold it
        self.network_ = network
        config = self.training_config(network)
        torch.manual_seed(int(self.seed))
        networks = self.build_networks(network)
        checkpoint = None if self.checkpoint is None else Path(self.checkpoint)
        if checkpoint is not None and not checkpoint.parent.is_dir():
            raise HarmonizerInputError(f"checkpoint folder {checkpoint.parent} does not exist")
        trainer = self.make_trainer(config, networks, data, device=self.device, checkpoint_path=checkpoint,
                                    checkpoint_every=int(self.checkpoint_every),
                                    checkpoint_extra=self._checkpoint_extra, progress=bool(self.progress))
        if self.resume and checkpoint is not None and checkpoint.exists():
            extra = trainer.load_checkpoint(checkpoint).get("extra", {})
            if extra.get("sites") != self.sites_ or extra.get("contrasts") != list(self.contrasts_):
                raise HarmonizerInputError(f"checkpoint {checkpoint} was trained on sites {extra.get('sites')} with "
                                           f"contrasts {extra.get('contrasts')}; these data have {self.sites_} and "
                                           f"{list(self.contrasts_)}")
        self.n_pairs_ = int(getattr(trainer, "n_pairs", 0))
        self.history_ = trainer.train()
        self.networks_ = trainer.networks.eval()
        self.n_scans_fit_ = n
        self.n_features_in_ = None
        return self

    def _training_slices(self, scans: ImageScans, scan_sites: np.ndarray, subjects):
        """Every scan's normalised slices in one :class:`SliceData`, the (n, C) intensity factors and the
        grid shapes. All scans are read first, so every slice is padded to one size (the largest grid's)."""
        loaded = [scans.load(i) for i in range(len(scans))]
        shapes = [data.shape[1:] for data, _, _ in loaded]
        axis, depth, k = int(self.slice_axis), self.pad_depth(), int(self.context)
        size = np.max([[s for a, s in enumerate(shape) if a != axis] for shape in shapes], axis=0)
        images, masks, sites, scan_ix, positions, factors = [], [], [], [], [], []
        for i, (data, mask, _) in enumerate(loaded):
            f = np.array([sl.intensity_factor(data[c], mask, self.percentile, f"{scans.name(i)}, contrast {name!r}")
                          for c, name in enumerate(self.contrasts_)])
            geometry = sl.slice_geometry(data.shape[1:], axis, depth, k, size=size)
            s, m, p = sl.volume_to_slices(data / f[:, None, None, None], mask, geometry)
            images.append(s)
            masks.append(m)
            positions.append(p)
            sites.append(np.full(len(p), scan_sites[i]))
            scan_ix.append(np.full(len(p), i))
            factors.append(f)
        cat = lambda parts: torch.from_numpy(np.concatenate(parts))  # noqa: E731
        data = SliceData(images=cat(images), masks=cat(masks), sites=cat(sites).long(), scans=cat(scan_ix).long(),
                         positions=cat(positions).long(),
                         centre=torch.from_numpy(sl.centre_channels(len(self.contrasts_), k)),
                         scan_sites=scan_sites, scan_subjects=subjects, n_sites=len(self.sites_), target=self.target_)
        return data, np.stack(factors), shapes

    def _check_paired_grids(self, scans, scan_sites, subjects, shapes) -> None:
        """Scans of one subject are matched voxel for voxel: refuse ones on grids of different shapes."""
        for subject in pd.unique(subjects):
            rows = np.flatnonzero(subjects == subject)
            odd = [r for r in rows if shapes[r] != shapes[rows[0]]]
            if odd:
                raise HarmonizerInputError(
                    f"subject {subject!r}: {scans.name(odd[0])} has grid {tuple(shapes[odd[0]])} but "
                    f"{scans.name(rows[0])} has {tuple(shapes[rows[0]])}; {self._owner()} matches a subject's "
                    "scans voxel for voxel: register them to one grid first")

    def _checkpoint_extra(self):
        return ({"site_scale": torch.from_numpy(self.site_scale_)},
                {"sites": self.sites_, "contrasts": list(self.contrasts_), "target": self.target_})

    # -- transform ------------------------------------------------------------------------------------------
    def transform(self, X, *, sites=None, masks=None, subjects=None, covariates=None, target_site=None):
        """Harmonized scans, in the form given (module docstring); ``subjects`` and ``covariates`` are accepted
        and unused."""
        return list(self.transform_iter(X, sites=sites, masks=masks, subjects=subjects, covariates=covariates,
                                        target_site=target_site))

    def transform_iter(self, X, *, sites=None, masks=None, subjects=None, covariates=None,
                       target_site=None) -> Iterator:
        """As :meth:`transform`, one scan at a time (read, map, yield)."""
        self.check_is_fitted()
        scans = image_scans(X, masks, self.contrasts_, self._owner())
        sites = require_sites(sites, len(scans), f"{self._owner()}.transform")
        target = self.target_
        if target_site is not None:
            target = self._site_index(target_site, "target_site")
            if target != self.target_ and not self.maps_to_any_site:
                raise HarmonizerInputError(f"{self._owner()} was trained to map to {self.sites_[self.target_]!r} only; "
                                           f"target_site {target_site!r} needs a model fitted with that target_site")
        unseen = sorted({str(s) for s in sites if _plain(s) not in self.sites_})
        if unseen and not self.supports_unseen_sites:
            raise HarmonizerInputError(f"site(s) {unseen} were not seen in training (sites {self.sites_}); "
                                       f"{self._owner()} harmonizes the training sites only: fit it again with them")
        for i in range(len(scans)):
            source = self.sites_.index(_plain(sites[i])) if _plain(sites[i]) in self.sites_ else -1
            out = self._transform_scan(scans, i, source, target)
            yield {c: out[j] for j, c in enumerate(self.contrasts_)} if scans.as_dict[i] else out[0]

    def maps_target_scans(self) -> bool:
        """Whether scans of the target site go through the networks too (default False: returned unchanged)."""
        return False

    def _transform_scan(self, scans: ImageScans, i: int, source: int, target: int) -> np.ndarray:
        """Scan ``i`` harmonized from site index ``source`` to ``target``: (C, X, Y, Z) float32."""
        data, mask, _ = scans.load(i)
        if source == target and not self.maps_target_scans():
            return data
        factors = np.array([sl.intensity_factor(data[c], mask, self.percentile, f"{scans.name(i)}, contrast {name!r}")
                            for c, name in enumerate(self.contrasts_)])
        geometry = sl.slice_geometry(data.shape[1:], int(self.slice_axis), self.pad_depth(), int(self.context))
        images, masks, positions = sl.volume_to_slices(data / factors[:, None, None, None], mask, geometry)
        device = next(self.networks_.parameters()).device
        self.networks_.eval()
        outputs = []
        with torch.no_grad():
            for start in range(0, len(positions), int(self.batch_size)):
                part = slice(start, start + int(self.batch_size))
                pred = self.map_slices(self.networks_, torch.from_numpy(images[part]).to(device),
                                       torch.from_numpy(masks[part]).to(device), source, target)
                outputs.append(pred.float().cpu().numpy())
        volume = sl.slices_to_volume(np.concatenate(outputs), positions, geometry, mask)
        return (volume * self.site_scale_[target][:, None, None, None]).astype(np.float32)

    # -- model file -----------------------------------------------------------------------------------------
    def _get_state(self):
        import surfharm

        _, meta = super()._get_state()
        tensors = {f"networks.{k}": v for k, v in self.networks_.state_dict().items()}
        tensors["site_scale"] = torch.from_numpy(np.ascontiguousarray(self.site_scale_))
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta.update({"format": self.model_format, "format_version": 1, "surfharm_version": surfharm.__version__,
                     "sites": self.sites_, "target": self.target_, "contrasts": list(self.contrasts_),
                     "n_in_channels": self.n_in_channels_, "network": self.network_,
                     "n_pairs": self.n_pairs_, "history": self.history_})
        if getattr(self, "covariate_names_", ()):
            meta["covariates"] = list(self.covariate_names_)
        return tensors, meta

    def _set_state(self, arrays, meta) -> None:
        if meta.get("format") != self.model_format:
            raise HarmonizerInputError(f"model metadata names format {meta.get('format')!r}; expected "
                                       f"{self.model_format!r}")
        super()._set_state(arrays, meta)
        self.sites_, self.target_ = list(meta["sites"]), int(meta["target"])
        self.contrasts_, self.n_in_channels_ = tuple(meta["contrasts"]), int(meta["n_in_channels"])
        self.n_pairs_, self.history_ = int(meta.get("n_pairs", 0)), list(meta.get("history", []))
        self.site_scale_ = np.asarray(arrays["site_scale"], dtype=np.float32)
        self.covariate_names_ = tuple(meta.get("covariates", ()))
        self.network_ = dict(meta["network"])
        networks = self.build_networks(self.network_)
        self.networks_ = load_weights(networks, arrays, "networks").to(self.device).eval()

    def _check_state(self, check: StateCheck) -> None:
        check.shape("site_scale", self.site_scale_, (len(self.sites_), len(self.contrasts_)))
        check.finite("site_scale", self.site_scale_, positive=True)
        check_weights(check, self.networks_, "networks")


def _plain(label):
    """A site or subject label as a JSON-able Python value (numpy scalars -> int/str)."""
    return label.item() if isinstance(label, np.generic) else label


__all__ = ["DeepImageHarmonizer", "ImageScans", "SliceData", "SliceTrainer", "SliceTrainingConfig", "image_covariates",
           "image_scans", "masked_l1"]
