"""CDAE (Zhao et al., MICCAI 2023): a cycle-consistent adversarial autoencoder for K >= 2 scanners.

A map is split into site-invariant features (an encoder trained against a site classifier) and a
scanner code; the decoder rebuilds a map from the features and a one-hot scanner code, so that
decoding with another scanner's code shows the scan as that scanner would have acquired it. The
networks, losses, weights and learning-rate schedule are the authors' (:mod:`surfharm.models.cdae`,
:mod:`surfharm.training.cdae`).

Shapes: ``X`` is ``(n_scans, V)`` (one measure, e.g. thickness in mm) or ``(n_scans, C, V)`` (several
measures of the same vertices, e.g. thickness, sulc, curv); ``V`` is an icosahedral vertex count
(level >= 2; the authors' is level 6, 40962). ``transform`` returns the same shape and dtype, every
channel harmonized. NaN marks a vertex outside cortex: it stays NaN and never enters a loss.

Normalisation: each site's maps are z-scored per vertex (and channel) with that site's mean and
standard deviation (saved with the model, as the authors'). A scan of site ``s`` harmonized to site
``t`` is

    y = Dec(Enc_inv((x - mu_s) / sd_s), code_t) * sd_t + mu_t

With ``keep_covariates`` (e.g. ``("age", "female")``) the linear effects of those covariates are biology
to keep, as S2SGAN keeps them (:mod:`surfharm.harmonize._location_scale`): pooled within-site slopes
``B`` per vertex are fitted on the training scans, every map enters as ``x - (c - c_mean) B`` and gets
its own covariate part back at the output. Without it, a scanner whose subjects are older would have
its age difference removed as a site effect.

Targets: every scan is harmonized to ``reference_site`` (default: the first site in sorted order), or to
any training site with ``transform(..., target_site=...)``. Scans of the target site are returned
unchanged. The authors train the mapping to the reference only (``train_targets="reference"``); with
``train_targets="all"`` every step maps each scan to a random other site, which trains every code as
a target.

Scanners not seen in training (``allow_unseen_sites=True``): their scans go through the site-invariant
encoder and are decoded with the target's code. The encoder was trained on per-site z-scored maps, so
an unseen site is z-scored with its own per-vertex mean and standard deviation, computed from the
scans passed to ``transform`` (at least 2 per unseen site; kept covariates removed first): its
location and scale are the part of its site effect that no training site can tell, and this is the
estimate ComBat's adaptation uses too. What is not location/scale (blur, saturation) is left to the
encoder. Without the option an unseen site is refused by name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spherical_ops import VERTEX_COUNTS, level_of
from surfharm.harmonize import _location_scale as ls
from surfharm.harmonize._networks import check_site_statistics, check_weights, covariate_columns, load_weights
from surfharm.harmonize.base import Harmonizer, HarmonizerInputError, StateCheck, check_data, register, require_sites
from surfharm.models.cdae import CDAENetwork, CDAEWeights

MODEL_FORMAT = "surfharm-cdae"


def normalisation_state(harmonizer) -> tuple[dict, dict]:
    """The model-file part shared by the harmonizers of vertex maps that z-score per site (CDAE, the
    traveling-subject mappings): tensors ``mean``, ``std``, ``mask`` and the metadata of sites, reference,
    shapes and history (without ``format``)."""
    import surfharm

    h = harmonizer
    tensors = {"mean": torch.from_numpy(h.mean_), "std": torch.from_numpy(h.std_),
               "mask": torch.from_numpy(h.mask_.astype(np.uint8))}
    meta = {"format_version": 1, "surfharm_version": surfharm.__version__,
            "sites": h.sites_, "reference": h.reference_, "level": h.level_,
            "n_features": h.n_features_in_, "n_channels": h.n_channels_, "input_ndim": h.input_ndim_,
            "history": h.history_}
    return tensors, meta


def set_normalisation_state(harmonizer, arrays, meta, model_format: str) -> None:
    """Restore what :func:`normalisation_state` wrote, after checking the file's ``format``."""
    if meta.get("format") != model_format:
        raise HarmonizerInputError(f"model metadata names format {meta.get('format')!r}; expected {model_format!r}")
    h = harmonizer
    h.sites_, h.reference_ = list(meta["sites"]), int(meta["reference"])
    h.level_, h.n_features_in_ = int(meta["level"]), int(meta["n_features"])
    h.n_channels_, h.input_ndim_ = int(meta["n_channels"]), int(meta["input_ndim"])
    h.history_ = meta.get("history", [])
    h.mean_, h.std_ = arrays["mean"], arrays["std"]
    h.mask_ = arrays["mask"].astype(bool)


@register("cdae")
class CDAE(Harmonizer):
    """CDAE harmonizer for two or more scanners (see the module docstring).

    Parameters
    ----------
    reference_site : site label or None
        The default target of ``transform``; None: the first site in sorted order.
    keep_covariates : tuple of str
        Numeric covariate columns whose linear effects are biology to keep (pooled within-site slopes).
    base_channels : int
        Width of the first invariant-encoder block; 32 gives the authors' 32-64-128-256 (scanner
        encoder 8-...-256, adversary 256-32-K and FC 256-32-K).
    train_targets : "reference" or "all"
        Which code a scan is mapped to during training (see the module docstring).
    epochs, max_steps, batch_size, lr, schedule :
        Optimisation; defaults are the authors' (50 epochs of batch 1, Adam 5e-4 with the piecewise
        schedule x1, 0.5, 0.2, 0.1, 0.05 from epochs 0, 5, 10, 20, 30).
    loss_weights : dict or None
        Overrides of the authors' weights (:class:`surfharm.models.cdae.CDAEWeights` field names).
    allow_unseen_sites : bool
        Let ``transform`` harmonize scans of sites not seen in training (normalised with their own
        per-vertex statistics); default False: such scans are refused by name.
    min_std_mm : float
        Floor of the per-vertex standard deviations.
    seed, device, checkpoint_dir, checkpoint_every, resume, progress :
        As :class:`surfharm.harmonize.s2sgan.S2SGAN`'s.

    Learned attributes
    ------------------
    sites_ : training sites, sorted;  reference_ : index of ``reference_site`` in ``sites_``
    level_ : int;  n_features_in_ : V;  n_channels_ : C;  input_ndim_ : 2 or 3 (the shape ``fit`` saw)
    mean_, std_ : (K, C, V) per-site statistics;  mask_ : (V,) bool, vertices finite and varying in every
    training scan;  keep_center_ : (p,);  keep_beta_ : (C, p, V) pooled slopes
    model_ : the trained :class:`surfharm.models.cdae.CDAENetwork`;  history_ : per-epoch losses
    """

    model_suffix = ".safetensors"
    run_options = ("checkpoint_dir", "resume", "progress", "device")
    fitted_attribute = "model_"

    def __init__(self, *, reference_site=None, keep_covariates: tuple = (), base_channels: int = 32,
                 train_targets: str = "reference", epochs: int = 50, max_steps: int | None = None,
                 batch_size: int = 1, lr: float = 5e-4, schedule: str = "piecewise", loss_weights: dict | None = None,
                 allow_unseen_sites: bool = False, min_std_mm: float = 0.01, seed: int = 0, device: str = "cpu",
                 checkpoint_dir=None, checkpoint_every: int = 0, resume: bool = False, progress: bool = False):
        self.reference_site = reference_site
        self.keep_covariates = keep_covariates
        self.base_channels = base_channels
        self.train_targets = train_targets
        self.epochs = epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.schedule = schedule
        self.loss_weights = loss_weights
        self.allow_unseen_sites = allow_unseen_sites
        self.min_std_mm = min_std_mm
        self.seed = seed
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.progress = progress

    def training_config(self, level: int, n_sites: int, n_channels: int, reference: int):
        """The :class:`surfharm.training.cdae.CDAEConfig` this harmonizer trains with."""
        from surfharm.training.cdae import CDAEConfig

        try:
            weights = CDAEWeights(**(self.loss_weights or {}))
        except TypeError:
            raise HarmonizerInputError(f"loss_weights {sorted(self.loss_weights)} hold unknown names; known: "
                                       f"{sorted(CDAEWeights().to_dict())}") from None
        try:
            return CDAEConfig(level=level, n_sites=n_sites, in_channels=n_channels,
                              base_channels=int(self.base_channels), reference=reference,
                              train_targets=self.train_targets, lr=float(self.lr), batch_size=int(self.batch_size),
                              epochs=int(self.epochs), max_steps=self.max_steps, schedule=self.schedule,
                              weights=weights, seed=int(self.seed))
        except ValueError as exc:
            raise HarmonizerInputError(f"CDAE: {exc}") from None

    # -- fit ------------------------------------------------------------------------------------------
    def fit(self, X, y=None, *, sites=None, covariates=None) -> "CDAE":
        """Train on the scans of two or more sites. X: (n_scans, V) or (n_scans, C, V), NaN outside cortex."""
        from surfharm.training.cdae import CDAETrainer

        maps, ndim, _ = check_maps(X, "CDAE")
        maps = maps.astype(np.float32)
        sites = require_sites(sites, maps.shape[0], "CDAE.fit")
        n, channels, n_vert = maps.shape
        level = icosahedral_level(n_vert, "CDAE")
        self.sites_ = sorted((_plain(s) for s in pd.unique(sites)), key=str)
        if len(self.sites_) < 2:
            raise HarmonizerInputError(f"CDAE needs scans of at least 2 sites, got {self.sites_}")
        if self.reference_site is not None and self.reference_site not in self.sites_:
            raise HarmonizerInputError(f"reference_site {self.reference_site!r} is not among the sites {self.sites_}")
        self.reference_ = self.sites_.index(self.reference_site) if self.reference_site is not None else 0
        index = site_indices(sites, self.sites_)
        rows = [np.flatnonzero(index == k) for k in range(len(self.sites_))]
        for site, r in zip(self.sites_, rows):
            if len(r) < 2:
                raise HarmonizerInputError(f"site {site!r} has {len(r)} scan(s); CDAE needs at least 2 per site")
        self.mask_ = np.isfinite(maps).all(axis=(0, 1))
        self.mask_[self.mask_] = (np.ptp(maps[:, :, self.mask_], axis=0) > 0).all(axis=0)
        if not self.mask_.any():
            raise HarmonizerInputError("no vertex is finite and varying in every training scan: "
                                       "the maps share no cortex")
        self.level_, self.n_features_in_, self.n_channels_, self.input_ndim_ = level, n_vert, channels, ndim
        kept = self._fit_covariate_effects(maps, covariates, rows)
        if kept is not None:
            maps = maps - kept
        self.mean_, self.std_ = ls.channel_site_normalisation(maps, rows, self.mask_, self.min_std_mm)  # (K, C, V)
        z, valid = ls.zscore_channels(maps, self.mean_[index], self.std_[index], self.mask_)

        config = self.training_config(level, len(self.sites_), channels, self.reference_)
        checkpoint = None if self.checkpoint_dir is None else Path(self.checkpoint_dir) / "checkpoint.safetensors"
        if checkpoint is not None and not checkpoint.parent.is_dir():
            raise HarmonizerInputError(f"checkpoint_dir {checkpoint.parent} does not exist")
        trainer = CDAETrainer(config, torch.from_numpy(z), torch.from_numpy(valid), torch.from_numpy(index),
                              device=self.device, checkpoint_path=checkpoint, checkpoint_every=self.checkpoint_every,
                              checkpoint_extra=self._checkpoint_extra, progress=self.progress)
        if self.resume and checkpoint is not None and checkpoint.exists():
            meta = trainer.load_checkpoint(checkpoint)
            extra = meta.get("extra", {})
            if extra.get("sites") != self.sites_ or extra.get("level") != self.level_:
                raise HarmonizerInputError(f"checkpoint {checkpoint} was trained on sites {extra.get('sites')} at "
                                           f"level {extra.get('level')}; these data have {self.sites_} at level "
                                           f"{self.level_}")
        self.history_ = trainer.train()
        self.model_ = trainer.network.eval()
        return self

    def _fit_covariate_effects(self, maps, covariates, rows) -> np.ndarray | None:
        names = list(self.keep_covariates)
        channels, n_vert = maps.shape[1:]
        self.keep_center_ = np.zeros(len(names), np.float32)
        self.keep_beta_ = np.zeros((channels, len(names), n_vert), np.float32)
        if not names:
            return None
        values = covariate_values(covariates, maps.shape[0], names)
        for c in range(channels):
            beta = ls.within_site_slopes(values, maps[:, c], rows, self.mask_)
            if beta is None:
                raise HarmonizerInputError(f"keep_covariates {names} do not vary independently within the sites "
                                           "(a column is constant within each site, or columns are collinear)")
            self.keep_beta_[c][:, self.mask_] = beta
        self.keep_center_ = values.mean(axis=0).astype(np.float32)
        return self._covariate_part(values)

    def _covariate_part(self, values: np.ndarray) -> np.ndarray:
        """(n, C, V) float32: the kept covariates' part of each map (pooled slopes)."""
        return np.stack([ls.covariate_part(values, self.keep_center_, self.keep_beta_[c])
                         for c in range(self.keep_beta_.shape[0])], axis=1)

    def _checkpoint_extra(self):
        tensors = {"mean": torch.from_numpy(self.mean_), "std": torch.from_numpy(self.std_),
                   "mask": torch.from_numpy(self.mask_.astype(np.uint8))}
        return tensors, {"sites": self.sites_, "level": self.level_}

    # -- transform ------------------------------------------------------------------------------------
    def transform(self, X, *, sites=None, covariates=None, target_site=None, batch_size: int = 8):
        """Harmonize every scan to ``target_site`` (default: the reference site); same shape and dtype as X.

        Scans of the target site are returned unchanged; vertices outside the training cortex mask
        or NaN in an input are returned as given.
        """
        self.check_is_fitted()
        maps, ndim, dtype = check_maps(X, "CDAE")
        self._check_shape(maps, ndim)
        sites = require_sites(sites, maps.shape[0], "CDAE.transform")
        target = self.reference_ if target_site is None else self._target_index(target_site)
        known = np.array([s in self.sites_ for s in sites], dtype=bool)
        unseen = sorted({str(s) for s in sites[~known]})
        if unseen and not self.allow_unseen_sites:
            raise HarmonizerInputError(
                f"site(s) {unseen} were not seen in training (sites {self.sites_}); refit including them, or "
                "build the model with allow_unseen_sites=True to encode them with their own per-vertex statistics")
        kept = 0.0
        if len(self.keep_covariates):
            kept = self._covariate_part(covariate_values(covariates, maps.shape[0], list(self.keep_covariates)))
        residual = maps.astype(np.float32) - kept
        mean = np.zeros_like(maps)
        std = np.ones_like(maps)
        index = np.full(maps.shape[0], -1)
        index[known] = site_indices(sites[known], self.sites_)
        mean[known], std[known] = self.mean_[index[known]], self.std_[index[known]]
        for label in pd.unique(sites[~known]):
            rows = np.flatnonzero(np.array([s == label for s in sites]))
            if len(rows) < 2:
                raise HarmonizerInputError(f"unseen site {label!r} has {len(rows)} scan(s) here; its per-vertex "
                                           "statistics need at least 2 scans of it in one transform call")
            m, s = ls.masked_site_normalisation(residual[rows].reshape(len(rows), -1), [np.arange(len(rows))],
                                                np.repeat(self.mask_[None], maps.shape[1], 0).ravel(),
                                                self.min_std_mm)
            mean[rows], std[rows] = m.reshape(maps.shape[1:]), s.reshape(maps.shape[1:])
        z, valid = ls.zscore_channels(residual, mean, std, self.mask_)
        out = maps.copy()
        moving = np.flatnonzero(index != target)
        device = next(self.model_.parameters()).device
        for start in range(0, len(moving), int(batch_size)):
            r = moving[start:start + int(batch_size)]
            with torch.no_grad():
                code = torch.full((len(r),), target, dtype=torch.long, device=device)
                zt = self.model_(torch.from_numpy(z[r]).to(device), code).float().cpu().numpy()
            mm = zt * self.std_[target] + self.mean_[target] + (kept[r] if np.ndim(kept) else 0.0)
            out[r] = np.where(valid[r][:, None], mm, maps[r])
        return out[:, 0] if ndim == 2 else out

    def _target_index(self, target_site) -> int:
        if target_site not in self.sites_:
            raise HarmonizerInputError(f"target_site {target_site!r} is not a training site; the model has "
                                       f"{self.sites_}")
        return self.sites_.index(target_site)

    def _check_shape(self, maps, ndim) -> None:
        n_vert, channels = maps.shape[2], maps.shape[1]
        if n_vert != self.n_features_in_:
            try:
                found = f"level {level_of(n_vert)}"
            except ValueError:
                found = "no icosahedral level"
            raise HarmonizerInputError(f"X has {n_vert} features ({found}), but CDAE is expecting "
                                       f"{self.n_features_in_} features as input (level {self.level_}, the level it "
                                       "was trained at); resample the maps or train a model at this level")
        if channels != self.n_channels_:
            raise HarmonizerInputError(f"X has {channels} channel(s) per vertex; the model was trained on "
                                       f"{self.n_channels_}")

    # -- model file ------------------------------------------------------------------------------------
    def _get_state(self):
        tensors = {f"model.{k}": v for k, v in self.model_.state_dict().items()}
        statistics, shared = normalisation_state(self)
        tensors.update({**statistics, "keep_center": torch.from_numpy(self.keep_center_),
                        "keep_beta": torch.from_numpy(self.keep_beta_)})
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"format": MODEL_FORMAT, **shared}
        return tensors, meta

    def _set_state(self, arrays, meta) -> None:
        set_normalisation_state(self, arrays, meta, MODEL_FORMAT)
        self.keep_center_, self.keep_beta_ = arrays["keep_center"], arrays["keep_beta"]
        net = CDAENetwork(self.n_channels_, self.level_, len(self.sites_), int(self.base_channels))
        self.model_ = load_weights(net, arrays, "model").to(self.device).eval()

    def _check_state(self, check: StateCheck) -> None:
        check.shape("mask", self.mask_, (self.n_features_in_,))
        check_site_statistics(check, self.mean_, self.std_, self.mask_,
                              (len(self.sites_), self.n_channels_, self.n_features_in_))
        check_weights(check, self.model_, "model")


# -- helpers shared with the paired mode ------------------------------------------------------------------

def check_maps(X, owner: str) -> tuple[np.ndarray, int, np.dtype]:
    """``X`` (n, V) or (n, C, V) -> ((n, C, V) float32 or float64 as X, X's ndim, that dtype).

    Integer maps become float64; networks run on a float32 copy (:func:`as_float32`)."""
    arr = X if isinstance(X, np.ndarray) else np.asarray(X)
    if arr.ndim == 3:
        n, channels, n_vert = arr.shape
        flat = check_data(arr.reshape(n, channels * n_vert))
        return flat.reshape(n, channels, n_vert), 3, flat.dtype
    if arr.ndim != 2 and not (hasattr(X, "toarray") and hasattr(X, "nnz")):
        raise HarmonizerInputError(f"{owner}: X must be (n_scans, V) or (n_scans, C, V), got shape {arr.shape}")
    flat = check_data(X)
    return flat[:, None, :], 2, flat.dtype


def icosahedral_level(n_vertices: int, owner: str) -> int:
    """The icosahedral level of ``n_vertices`` (>= 2), or a HarmonizerInputError naming the counts."""
    try:
        level = level_of(n_vertices)
    except ValueError:
        raise HarmonizerInputError(
            f"{owner} works on icosahedral maps; got {n_vertices} vertices, expected one of "
            f"{', '.join(str(v) for v in VERTEX_COUNTS)} (levels 0-7; fsaverage5 = 10242)") from None
    if level < 2:
        raise HarmonizerInputError(f"{owner} needs icosahedral level >= 2, got level {level} ({n_vertices} vertices)")
    return level


def site_indices(sites, known: list) -> np.ndarray:
    """Index of every scan's site in ``known`` (int64)."""
    lookup = {s: i for i, s in enumerate(known)}
    return np.array([lookup[_plain(s)] for s in sites], dtype=np.int64)


def covariate_values(covariates, n_scans: int, names: list) -> np.ndarray:
    """(n_scans, p) float64 values of the kept covariate columns ``names``, checked."""
    return covariate_columns(covariates, n_scans, names, "keep_covariates")


def _plain(label):
    """A site label as a JSON-able Python value (numpy scalars -> int/str)."""
    return label.item() if isinstance(label, np.generic) else label
