"""Paired spherical U-Nets for traveling subjects: the surface counterpart of DeepHarmony.

When some subjects were scanned on several scanners, each scanner's scans of a subject and the
reference scanner's scans of the same subject form pairs, and a network can learn the mapping from
them directly (supervised) instead of from unpaired losses. This is a method of its own
(``paired-unet``), not a mode of CDAE: it needs a side datum CDAE does not (``subjects``), it learns
one network per scanner instead of a shared autoencoder, and its only target is the reference scanner
(what the pairs teach); its model files and refusals differ accordingly.

* One residual spherical U-Net (:class:`spherical_ops.IcoUNet`) per scanner other than the reference.
  Maps are z-scored per vertex with their own site's statistics, as CDAE's; the network predicts a
  correction added to the input (DeepHarmony's residual), starting at zero: the untrained model is
  per-vertex mean/std matching to the reference.
* Loss on each pair: L1 to the reference scan + ``correlation_weight`` x (1 - Pearson r); with
  ``unpaired_weight`` > 0, scans without a partner add ``unpaired_weight`` x (1 - r(x, mapped)), which keeps
  each subject's pattern where no pair says what the output should be.
* Pairs come from ``subjects`` (one label per scan): every scan of a non-reference scanner whose
  subject also has a reference-scanner scan is paired with it (with each, when there are several).
  ``fit`` refuses, naming them, scanners without any pair; and scans given as maps of different
  lengths (different icosahedral levels or vertex counts), which cannot be paired vertex by vertex.

Shapes as CDAE's: ``X`` (n_scans, V) or (n_scans, C, V). ``transform`` maps every scan of a trained
non-reference scanner to the reference; reference scans are returned unchanged; sites not seen in
training are refused.

:class:`TravelingSubjectsHarmonizer` holds what this method shares with MISPEL's shared-latent scheme
(``mispel-sphere``, :mod:`surfharm.harmonize.mispel_sphere`): the checks of maps, sites and subjects,
the z-scoring, checkpoints and resume, the refusal of unseen sites and the normalisation in the model
file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from surfharm.harmonize import _location_scale as ls
from surfharm.harmonize._networks import check_site_statistics, check_weights, load_weights
from surfharm.harmonize.base import Harmonizer, HarmonizerInputError, StateCheck, register, require_sites
from surfharm.harmonize.cdae import (_plain, check_maps, icosahedral_level, normalisation_state,
                                     set_normalisation_state, site_indices)

MODEL_FORMAT = "surfharm-paired-unet"


class TravelingSubjectsHarmonizer(Harmonizer):
    """What the methods learned from traveling subjects share (``paired-unet``, ``mispel-sphere``).

    The checks of ``X``, ``sites`` and ``subjects``; the training sites and reference; the cortex mask
    and the per-site, per-vertex z-scoring; the checkpoint directory and its resume check; the checks
    of ``transform``'s input (unseen sites refused by name); and the normalisation part of the model
    file. A subclass sets ``format_name`` (how its messages name it) and trains its networks.
    """

    side_data = ("subjects",)
    required_side_data = ("subjects",)
    model_suffix = ".safetensors"
    run_options = ("checkpoint_dir", "resume", "progress", "device")
    fitted_attribute = "networks_"
    format_name = "paired"

    def _prepare(self, X, sites, subjects) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Check the training data; set ``sites_``, ``reference_``, ``mask_``, ``mean_``, ``std_``, level and
        shapes; return (maps (n, C, V) float32, site index (n,), subjects (n,) object)."""
        name, owner = self.format_name, type(self).__name__
        maps, ndim, _ = check_maps(_aligned(X), name)
        maps = maps.astype(np.float32)
        n, channels, n_vert = maps.shape
        sites = require_sites(sites, n, f"{owner}.fit")
        if subjects is None:
            raise HarmonizerInputError(f"{name} needs subjects=: one subject label per scan (scans of the same "
                                       "subject on different sites form the training pairs)")
        subjects = np.asarray(subjects, dtype=object)
        if subjects.shape != (n,):
            raise HarmonizerInputError(f"subjects has shape {subjects.shape}; expected one label per scan ({n})")
        level = icosahedral_level(n_vert, name)
        self.sites_ = sorted((_plain(s) for s in pd.unique(sites)), key=str)
        if len(self.sites_) < 2:
            raise HarmonizerInputError(f"{name} needs scans of at least 2 sites, got {self.sites_}")
        if self.reference_site is not None and self.reference_site not in self.sites_:
            raise HarmonizerInputError(f"reference_site {self.reference_site!r} is not among the sites {self.sites_}")
        self.reference_ = self.sites_.index(self.reference_site) if self.reference_site is not None else 0
        index = site_indices(sites, self.sites_)
        self.level_, self.n_features_in_, self.n_channels_, self.input_ndim_ = level, n_vert, channels, ndim
        return maps, index, subjects

    def _normalise(self, maps: np.ndarray, index: np.ndarray) -> None:
        """Cortex mask and per-site, per-vertex statistics of the training maps."""
        rows = [np.flatnonzero(index == k) for k in range(len(self.sites_))]
        self.mask_ = np.isfinite(maps).all(axis=(0, 1))
        self.mask_[self.mask_] = (np.ptp(maps[:, :, self.mask_], axis=0) > 0).all(axis=0)
        if not self.mask_.any():
            raise HarmonizerInputError("no vertex is finite and varying in every training scan: "
                                       "the maps share no cortex")
        self.mean_, self.std_ = ls.channel_site_normalisation(maps, rows, self.mask_, self.min_std_mm)

    def _zscore(self, maps, index):
        """(n, C, V) maps of the sites ``index`` -> their z-scores and (n, V) valid vertices."""
        return ls.zscore_channels(maps, self.mean_[index], self.std_[index], self.mask_)

    def _checkpoint(self) -> Path | None:
        checkpoint = None if self.checkpoint_dir is None else Path(self.checkpoint_dir) / "checkpoint.safetensors"
        if checkpoint is not None and not checkpoint.parent.is_dir():
            raise HarmonizerInputError(f"checkpoint_dir {checkpoint.parent} does not exist")
        return checkpoint

    def _checkpoint_extra(self):
        return {}, {"sites": self.sites_, "level": self.level_}

    def _resume(self, trainer, checkpoint: Path | None) -> None:
        """Restore ``trainer`` from ``checkpoint`` when asked to and it exists; refuse another data set's."""
        if self.resume and checkpoint is not None and checkpoint.exists():
            extra = trainer.load_checkpoint(checkpoint).get("extra", {})
            if extra.get("sites") != self.sites_ or extra.get("level") != self.level_:
                raise HarmonizerInputError(f"checkpoint {checkpoint} was trained on sites {extra.get('sites')} at "
                                           f"level {extra.get('level')}; these data have {self.sites_} at level "
                                           f"{self.level_}")

    def _train(self, trainer, checkpoint: Path | None) -> None:
        """Resume ``trainer`` if asked (see :meth:`_resume`), train it, keep its history and networks."""
        self._resume(trainer, checkpoint)
        self.history_ = trainer.train()
        self.networks_ = trainer.networks.eval()

    def _map_scans(self, maps, z, valid, index, rows, batch_size: int, network) -> np.ndarray:
        """``maps`` (n, C, V) with the scans ``rows`` replaced by ``network(z, site index)`` (z-scores, as a
        tensor pair), put into the reference scanner's unit; vertices outside ``valid`` keep their input."""
        out = maps.copy()
        device = next(self.networks_.parameters()).device
        ref = self.reference_
        for start in range(0, len(rows), int(batch_size)):
            r = rows[start:start + int(batch_size)]
            with torch.no_grad():
                zt = network(torch.from_numpy(z[r]).to(device), torch.from_numpy(index[r]).to(device))
            zt = zt.float().cpu().numpy()
            out[r] = np.where(valid[r][:, None], zt * self.std_[ref] + self.mean_[ref], maps[r])
        return out

    def _transform_input(self, X, sites, advice: str) -> tuple[np.ndarray, int, np.ndarray]:
        """Checked maps (n, C, V), X's ndim and the site index of every scan; unseen sites refused."""
        self.check_is_fitted()
        maps, ndim, _ = check_maps(_aligned(X), self.format_name)
        owner = type(self).__name__
        if maps.shape[2] != self.n_features_in_:
            raise HarmonizerInputError(f"X has {maps.shape[2]} features, but {owner} is expecting "
                                       f"{self.n_features_in_} features as input (level {self.level_}, the level it "
                                       "was trained at); resample the maps or train a model at this level")
        if maps.shape[1] != self.n_channels_:
            raise HarmonizerInputError(f"X has {maps.shape[1]} channel(s) per vertex; the model was trained on "
                                       f"{self.n_channels_}")
        sites = require_sites(sites, maps.shape[0], f"{owner}.transform")
        unknown = sorted({str(s) for s in sites if s not in self.sites_})
        if unknown:
            raise HarmonizerInputError(f"site(s) {unknown} were not seen in training (sites {self.sites_}); "
                                       + advice)
        return maps, ndim, site_indices(sites, self.sites_)

    # -- model file ------------------------------------------------------------------------------------------
    #: ``format`` of the model file; the count of training units (pairs, groups) kept as ``count_meta``.
    model_format: str = ""
    count_meta: str = ""

    def _get_state(self):
        tensors, meta = normalisation_state(self)
        tensors.update({f"networks.{k}": v for k, v in self.networks_.state_dict().items()})
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        return tensors, {"format": self.model_format, **meta, self.count_meta: getattr(self, f"{self.count_meta}_")}

    def _set_state(self, arrays, meta) -> None:
        set_normalisation_state(self, arrays, meta, self.model_format)
        setattr(self, f"{self.count_meta}_", int(meta.get(self.count_meta, 0)))
        self.networks_ = load_weights(self._build_networks(), arrays, "networks").to(self.device).eval()

    def _build_networks(self):
        """The untrained networks of the fitted shapes (their weights come from the model file)."""
        raise NotImplementedError

    def _check_state(self, check: StateCheck) -> None:
        check.shape("mask", self.mask_, (self.n_features_in_,))
        check_site_statistics(check, self.mean_, self.std_, self.mask_,
                              (len(self.sites_), self.n_channels_, self.n_features_in_))
        check_weights(check, self.networks_, "networks")


@register("paired-unet")
class PairedUNet(TravelingSubjectsHarmonizer):
    """Supervised spherical mapping of every scanner to a reference, trained on traveling subjects.

    Parameters
    ----------
    reference_site : site label or None
        The scanner every other is mapped to; None: the first site in sorted order.
    depth, base_channels : the U-Nets' (:class:`spherical_ops.IcoUNet`).
    correlation_weight, unpaired_weight : float
        Loss weights (see the module docstring).
    epochs, max_steps, batch_size, lr, schedule : optimisation (Adam, cosine schedule by default).
    min_std_mm, seed, device, checkpoint_dir, checkpoint_every, resume, progress : as CDAE's.

    Learned attributes
    ------------------
    sites_, reference_, level_, n_features_in_, n_channels_, mean_, std_, mask_ : as CDAE's
    n_pairs_ : pairs trained on;  networks_ : the trained :class:`surfharm.training.paired.PairedNetworks`
    history_ : per-epoch losses
    """

    format_name = "paired-unet"

    def __init__(self, *, reference_site=None, depth: int = 4, base_channels: int = 16,
                 correlation_weight: float = 1.0, unpaired_weight: float = 0.0, epochs: int = 50,
                 max_steps: int | None = None, batch_size: int = 4, lr: float = 1e-3, schedule: str = "cosine",
                 min_std_mm: float = 0.01, seed: int = 0, device: str = "cpu", checkpoint_dir=None,
                 checkpoint_every: int = 0, resume: bool = False, progress: bool = False):
        self.reference_site = reference_site
        self.depth = depth
        self.base_channels = base_channels
        self.correlation_weight = correlation_weight
        self.unpaired_weight = unpaired_weight
        self.epochs = epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.schedule = schedule
        self.min_std_mm = min_std_mm
        self.seed = seed
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.progress = progress

    def training_config(self, level: int, n_sites: int, n_channels: int, reference: int):
        """The :class:`surfharm.training.paired.PairedConfig` this harmonizer trains with."""
        from surfharm.training.paired import PairedConfig

        try:
            return PairedConfig(level=level, n_sites=n_sites, reference=reference, in_channels=n_channels,
                                depth=int(self.depth), base_channels=int(self.base_channels), lr=float(self.lr),
                                batch_size=int(self.batch_size), epochs=int(self.epochs), max_steps=self.max_steps,
                                schedule=self.schedule, correlation=float(self.correlation_weight),
                                unpaired=float(self.unpaired_weight), seed=int(self.seed))
        except ValueError as exc:
            raise HarmonizerInputError(f"paired-unet: {exc}") from None

    def fit(self, X, y=None, *, sites=None, subjects=None) -> "PairedUNet":
        """Train on the pairs of ``X`` (n_scans, V) or (n_scans, C, V) given by ``subjects``."""
        from surfharm.training.paired import PairedTrainer

        maps, index, subjects = self._prepare(X, sites, subjects)
        pairs, unpaired = find_pairs(index, subjects, self.reference_)
        paired_sites = set(index[pairs[:, 0]].tolist()) if len(pairs) else set()
        missing = [self.sites_[k] for k in range(len(self.sites_)) if k != self.reference_ and k not in paired_sites]
        if missing:
            raise HarmonizerInputError(
                f"site(s) {missing} have no pairs: none of their subjects was also scanned on the reference site "
                f"{self.sites_[self.reference_]!r}. paired-unet learns each site's mapping from such pairs; give "
                "subjects= labels that match across sites, or harmonize those sites with an unpaired method (cdae)")
        self._normalise(maps, index)
        self.n_pairs_ = int(len(pairs))
        z, valid = self._zscore(maps, index)
        config = self.training_config(self.level_, len(self.sites_), self.n_channels_, self.reference_)
        checkpoint = self._checkpoint()
        trainer = PairedTrainer(config, torch.from_numpy(z), torch.from_numpy(valid), torch.from_numpy(index),
                                pairs, unpaired, device=self.device, checkpoint_path=checkpoint,
                                checkpoint_every=self.checkpoint_every, progress=self.progress,
                                checkpoint_extra=self._checkpoint_extra)
        self._train(trainer, checkpoint)
        return self

    def transform(self, X, *, sites=None, subjects=None, batch_size: int = 8):
        """Map every scan of a non-reference site to the reference; same shape and dtype as ``X``.

        ``subjects`` is accepted (the declared side datum) and not needed: the mapping is per scan.
        """
        maps, ndim, index = self._transform_input(
            X, sites, "the paired mapping exists only for scanners with traveling subjects")
        z, valid = self._zscore(maps, index)
        moving = np.flatnonzero(index != self.reference_)
        out = self._map_scans(maps, z, valid, index, moving, batch_size, self.networks_)
        return out[:, 0] if ndim == 2 else out

    # -- model file ------------------------------------------------------------------------------------
    model_format = MODEL_FORMAT
    count_meta = "n_pairs"

    def _build_networks(self):
        from surfharm.training.paired import PairedNetworks

        return PairedNetworks(self.training_config(self.level_, len(self.sites_), self.n_channels_, self.reference_))


def find_pairs(index: np.ndarray, subjects: np.ndarray, reference: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (scan of a non-reference site, reference scan of the same subject) as (n_pairs, 2) rows, and
    the rows of non-reference scans without a partner."""
    ref_rows: dict = {}
    for row in np.flatnonzero(index == reference):
        ref_rows.setdefault(subjects[row], []).append(row)
    pairs, unpaired = [], []
    for row in np.flatnonzero(index != reference):
        partners = ref_rows.get(subjects[row], [])
        pairs += [(row, p) for p in partners]
        if not partners:
            unpaired.append(row)
    return np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(unpaired, dtype=np.int64)


def find_traveling_groups(index: np.ndarray, subjects: np.ndarray, n_sites: int) -> np.ndarray:
    """The scans of every traveling subject (seen on >= 2 sites) as (n_groups, n_sites) rows, -1 where the
    subject has no scan on that site.

    A subject with several scans on a site gives several groups: group r takes its r-th scan on each
    site (its last one on sites with fewer), so that every scan enters a group.
    """
    scans: dict = {}
    for row in range(len(index)):
        scans.setdefault(subjects[row], {}).setdefault(int(index[row]), []).append(row)
    groups = []
    for by_site in scans.values():
        if len(by_site) < 2:
            continue
        for r in range(max(len(rows) for rows in by_site.values())):
            group = np.full(n_sites, -1, dtype=np.int64)
            for k, rows in by_site.items():
                group[k] = rows[min(r, len(rows) - 1)]
            groups.append(group)
    return np.array(groups, dtype=np.int64).reshape(-1, n_sites)


def _aligned(X):
    """``X`` as an array; a list of per-scan maps of different lengths is refused, naming them."""
    if isinstance(X, (list, tuple)) and X and all(hasattr(x, "shape") for x in X):
        shapes = [np.shape(x) for x in X]
        if len(set(shapes)) > 1:
            def describe(shape):
                n = shape[-1]
                try:
                    from spherical_ops import level_of
                    return f"{n} vertices (level {level_of(n)})"
                except ValueError:
                    return f"{n} vertices (no icosahedral level)"
            found = sorted({describe(s) for s in shapes})
            first = {describe(s): i for i, s in reversed(list(enumerate(shapes)))}
            raise HarmonizerInputError(
                "the scans are not aligned: they have " + ", ".join(f"{d} (first at scan {first[d]})" for d in found)
                + "; pairs are compared vertex by vertex: resample every scan to one icosahedral level first")
        return np.stack([np.asarray(x) for x in X])
    return X
