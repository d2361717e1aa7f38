"""S2SGAN (Zhao et al., MICCAI 2019): cycle-consistent spherical U-Nets mapping one site's maps to another's.

Two sites only: a *source* whose scans are mapped to the *target*'s appearance. Each site's maps
are z-scored per vertex with that site's mean and standard deviation (saved with the model); the
generator G_XY maps z-scored source maps to z-scored target maps, which are brought back to
millimetres with the target's statistics:

    y = G_XY((x - mu_source) / sd_source) * sd_target + mu_target

The generator is a full U-Net as the authors' (``residual=False``): what a per-vertex linear map
cannot do (non-linear intensity effects, a change of effective resolution) is learned without paired
scans from the least-squares adversarial loss, the cycle-consistency and identity L1 losses and the
correlation-coefficient loss that keeps each subject's pattern (weights as the authors': 1, 10, 0.5,
0.5). A residual generator (``residual=True``) starts as the identity, where every L1 term is at its
minimum and pulls back harder than the adversarial term pushes: on the benchmark it never left
per-vertex mean/std matching.

With ``keep_covariates`` (e.g. ``("age", "female")``) the linear effects of those covariates are kept out
of the site statistics, as ComBat keeps its covariates: per vertex, pooled within-site slopes ``B`` are
fitted on the training scans, every map is taken as ``x - (c - c_mean) B`` through the normalisation and
the generator, and its own covariate part is added back to the output. Without it, a site whose scans
are older than the other's would have its age difference removed as if it were a site effect. With
``covariate_slopes="per-site"`` each site's slopes are fitted apart and a mapped scan takes the other
site's: a scanner that attenuates the age effect (blur, saturation) then attenuates it on mapped scans.

With ``calibrate=True`` the generator's output is first matched per vertex to mean 0 and SD 1 over
the source's training scans, ``(G - m) / s``: the network supplies what a per-vertex map cannot, the
correction removes the per-vertex bias a short training leaves. It is off by default (the authors'
output). On the level-5 benchmark (3 cross-validation splits), calibration with kept covariates and
per-site slopes took the site AUROC from 0.660 to 0.493 for A -> B (the site-free truth: 0.497) and from
0.621 to 0.492 for B -> A, with the age R² at 0.96 and 1.11 of the target site's truth, at a
traveling-subject MAE of 0.061 mm instead of 0.060 (A -> B): for a scanner change, use
``calibrate=True, keep_covariates=(...), covariate_slopes="per-site"``.

``transform`` maps source-site scans to the target and returns target-site scans unchanged
(``direction="reverse"``: target scans to the source, source scans unchanged). Vertices that are
NaN in an input stay NaN in its output and never enter the losses; vertices outside the training
cortex mask but finite in an input are returned unchanged.

Model files: one ``.safetensors`` file (generator weights, normalisation statistics) with the JSON
metadata (sites, level, configuration, training history, package version) in its header and in a
``.json`` copy beside it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spherical_ops import VERTEX_COUNTS, level_of
from surfharm.harmonize import _location_scale as ls
from surfharm.harmonize._networks import check_weights, covariate_columns, load_weights
from surfharm.harmonize.base import Harmonizer, HarmonizerInputError, StateCheck, check_data, register, require_sites
from surfharm.models import LossWeights, SphericalGenerator, masked_pearson

MODEL_FORMAT = "surfharm-s2sgan"
DIRECTIONS = ("forward", "reverse")


@register("s2sgan")
class S2SGAN(Harmonizer):
    """S2SGAN harmonizer between two sites (see the module docstring).

    Parameters
    ----------
    source, target : site labels
        Scans of ``source`` are mapped to ``target``'s appearance. Default: of the two sites in
        ``fit``, the first in sorted order is the target.
    condition_on : tuple of str
        Covariate columns (of the DataFrame given to ``fit``/``transform``) fed to generators and
        discriminators as constant channels after standardisation, e.g. ``("age",)`` for infants.
    keep_covariates : tuple of str
        Numeric covariate columns whose linear effects are biology to keep (see the module
        docstring); ``transform`` then needs them too. Default none (the authors' normalisation).
    covariate_slopes : "pooled" or "per-site"
        With ``keep_covariates``: "pooled" (default) fits one within-site slope per vertex for both
        sites, as ComBat does, and the output keeps it; "per-site" fits each site's own slope, and a
        mapped scan takes the other site's (a scanner that attenuates the age effect then does so on
        the mapped scans too).
    depth, base_channels, residual, disc_channels, disc_down :
        Networks (:class:`surfharm.training.TrainingConfig`). Defaults suit level 5 on a CPU.
    epochs, max_steps, batch_size, lr, schedule, pool_size :
        Optimisation (:class:`surfharm.training.TrainingConfig`).
    cycle_weight, identity_weight, correlation_weight : float
        Loss weights (the authors': 10, 0.5, 0.5).
    validation_fraction : float
        Share of each site's scans held out of training and scored after every epoch (cycle error
        in mm and input/output correlation; site AUROC when each site keeps >= 4 scans).
    min_std_mm : float
        Floor of the per-vertex standard deviations (avoids dividing by ~0 at near-constant vertices).
    calibrate : bool
        After training, match each generator's outputs on the training scans to the other site's
        per-vertex mean and standard deviation (one location/scale correction per vertex and
        direction, in z-units, saved with the model). Default off: the authors' generator output
        as it is (see the module docstring for what it changed on the benchmark).
    seed : int
        Seeds initialisation, batches, validation split and pool draws (deterministic on CPU).
    device : str
        "cpu" (default) or "cuda" (bfloat16 autocast).
    checkpoint_dir : path or None
        Write ``checkpoint.safetensors`` (+ ``.json``) there every ``checkpoint_every`` steps and
        at the end; with ``resume`` continue from it.
    progress : bool
        Show a progress bar with the losses.

    Learned attributes
    ------------------
    sites_ : [source, target];  level_ : int;  n_features_in_ : V
    mean_, std_ : (2, V) per-site per-vertex statistics (mm), rows in ``sites_`` order
    mask_ : (V,) bool, vertices finite in every training scan and not constant across them
    cond_mean_, cond_std_ : (n_cond,) standardisation of ``condition_on``
    keep_center_ : (n_keep,) training means of ``keep_covariates``;  ``keep_beta_`` : (2, n_keep, V) their
        within-site slopes (mm per unit) for the source and the target, equal with "pooled" slopes,
        0 outside ``mask_``
    output_mean_, output_std_ : (2, V) or None, with ``calibrate``: per-vertex mean and standard
        deviation (z-units) of G_XY's outputs on the source's training scans (row 0) and of G_YX's on
        the target's (row 1), mapped to 0 and 1 by ``transform``
    generator_xy_, generator_yx_ : the trained :class:`surfharm.models.SphericalGenerator` pair
    history_ : list of dicts, per-epoch losses and validation scores
    """

    def __init__(self, *, source=None, target=None, condition_on: tuple = (), keep_covariates: tuple = (),
                 covariate_slopes: str = "pooled", depth: int = 4, base_channels: int = 16, residual: bool = False,
                 disc_channels: int = 16, disc_down: int = 3,
                 epochs: int = 50, max_steps: int | None = None, batch_size: int = 1, lr: float = 2e-4,
                 schedule: str = "cosine", pool_size: int = 20, cycle_weight: float = 10.0,
                 identity_weight: float = 0.5, correlation_weight: float = 0.5, validation_fraction: float = 0.0,
                 min_std_mm: float = 0.01, calibrate: bool = False, seed: int = 0, device: str = "cpu",
                 checkpoint_dir=None, checkpoint_every: int = 0, resume: bool = False, progress: bool = False):
        self.source = source
        self.target = target
        self.condition_on = condition_on
        self.keep_covariates = keep_covariates
        self.covariate_slopes = covariate_slopes
        self.depth = depth
        self.base_channels = base_channels
        self.residual = residual
        self.disc_channels = disc_channels
        self.disc_down = disc_down
        self.epochs = epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.schedule = schedule
        self.pool_size = pool_size
        self.cycle_weight = cycle_weight
        self.identity_weight = identity_weight
        self.correlation_weight = correlation_weight
        self.validation_fraction = validation_fraction
        self.min_std_mm = min_std_mm
        self.calibrate = calibrate
        self.seed = seed
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.progress = progress

    # -- fit ------------------------------------------------------------------------------------------
    def training_config(self, level: int):
        """The :class:`surfharm.training.TrainingConfig` this harmonizer trains with at ``level``."""
        from surfharm.training import TrainingConfig

        weights = LossWeights(cycle=float(self.cycle_weight), identity=float(self.identity_weight),
                              correlation=float(self.correlation_weight))
        return TrainingConfig(level=level, in_channels=1, cond_channels=len(self.condition_on), depth=int(self.depth),
                              base_channels=int(self.base_channels), residual=bool(self.residual),
                              disc_channels=int(self.disc_channels), disc_down=int(self.disc_down),
                              lr=float(self.lr), batch_size=int(self.batch_size), epochs=int(self.epochs),
                              max_steps=self.max_steps, schedule=self.schedule, pool_size=int(self.pool_size),
                              weights=weights, seed=int(self.seed))

    model_suffix = ".safetensors"
    # Where a model was trained and how its training was checkpointed do not belong to the model:
    # a loaded model runs on the CPU unless load(..., device="cuda") says otherwise.
    run_options = ("checkpoint_dir", "resume", "progress", "device")
    fitted_attribute = "generator_xy_"

    def fit(self, X, y=None, *, sites=None, covariates=None) -> "S2SGAN":
        """Train on the scans of exactly two sites. X: (n_scans, V) in mm, NaN outside cortex."""
        from surfharm.training import CycleGANTrainer

        X = check_data(X, dtype=np.float32)
        sites = require_sites(sites, X.shape[0], "S2SGAN.fit")
        level = _level_of(X.shape[1])
        self.sites_ = self._choose_sites(sites, self.source, self.target)
        cond = self._fit_conditions(covariates, X.shape[0])
        rows = [np.flatnonzero(sites == s) for s in self.sites_]
        for site, r in zip(self.sites_, rows):
            if len(r) < 2:
                raise HarmonizerInputError(f"site {site!r} has {len(r)} scan(s); S2SGAN needs at least 2 per site")
        # Vertices used: finite in every training scan and not constant (a constant carries no site
        # information: e.g. a medial wall filled with zeros); the others are returned as given.
        self.mask_ = np.isfinite(X).all(axis=0)
        self.mask_[self.mask_] = np.ptp(X[:, self.mask_], axis=0) > 0
        if not self.mask_.any():
            raise HarmonizerInputError("no vertex is finite and varying in every training scan: "
                                       "the maps share no cortex")
        train_rows, val_rows = self._split(rows)
        kept = self._fit_covariate_effects(X, covariates, rows, train_rows)
        if kept is not None:
            X = X - kept
        self.mean_, self.std_ = ls.masked_site_normalisation(X, train_rows, self.mask_, self.min_std_mm)
        self.level_, self.n_features_in_ = level, X.shape[1]

        domains = [self._domain(X[r], i, None if cond is None else cond[r]) for i, r in enumerate(train_rows)]
        config = self.training_config(level)
        checkpoint = None if self.checkpoint_dir is None else Path(self.checkpoint_dir) / "checkpoint.safetensors"
        if checkpoint is not None and not checkpoint.parent.is_dir():
            raise HarmonizerInputError(f"checkpoint_dir {checkpoint.parent} does not exist")
        validate = self._validator(X, cond, val_rows) if any(len(v) for v in val_rows) else None
        trainer = CycleGANTrainer(config, *domains, device=self.device, checkpoint_path=checkpoint,
                                  checkpoint_every=self.checkpoint_every, validate=validate,
                                  checkpoint_extra=self._checkpoint_extra, progress=self.progress)
        self._trainer = trainer
        self.output_mean_ = self.output_std_ = None          # the validation scores raw generator outputs
        if self.resume and checkpoint is not None and checkpoint.exists():
            meta = trainer.load_checkpoint(checkpoint)
            self._check_resumed(meta, checkpoint)
        self.history_ = trainer.train()
        self.generator_xy_ = trainer.generators.g_xy.eval()
        self.generator_yx_ = trainer.generators.g_yx.eval()
        del self._trainer
        if self.calibrate:
            self._fit_calibration(X, cond, train_rows)
        return self

    def _fit_calibration(self, X, cond, train_rows, floor: float = 0.05) -> None:
        """Per-vertex mean/std (z-units) of each generator's outputs on its training scans.

        The standard deviation is floored at ``floor`` z-units so that a vertex the generator holds
        nearly constant is not blown up by the division in :meth:`_generate`.
        """
        means, stds = [], []
        for domain, rows in enumerate(train_rows):
            z = np.concatenate([self._generator_z(X[r], domain, None if cond is None else cond[r])
                                for r in np.array_split(rows, max(1, -(-len(rows) // 8)))])  # (n, V)
            mean, std = ls.masked_mean_std(z, np.isfinite(X[rows]) & self.mask_, self.mask_, floor)
            means.append(mean)
            stds.append(std)
        self.output_mean_ = np.stack(means).astype(np.float32)
        self.output_std_ = np.stack(stds).astype(np.float32)

    def _choose_sites(self, sites, source, target) -> list:
        present = list(pd.unique(sites))
        for name, value in (("source", source), ("target", target)):
            if value is not None and value not in present:
                raise HarmonizerInputError(f"{name} site {value!r} is not among the sites of the data {present}")
        if source is None or target is None:
            if len(present) != 2:
                raise HarmonizerInputError(
                    f"S2SGAN maps one site to another and got {len(present)} site(s) {present}; give exactly two "
                    "sites, or choose the pair with source=... and target=...")
            ordered = sorted(present, key=str)
            target = target if target is not None else (ordered[0] if source != ordered[0] else ordered[1])
            source = source if source is not None else next(s for s in ordered if s != target)
        if source == target:
            raise HarmonizerInputError(f"source and target are the same site {source!r}")
        if len(present) > 2:
            raise HarmonizerInputError(
                f"S2SGAN trains on exactly two sites, the data hold {len(present)}: {present}; "
                f"pass only the scans of {source!r} and {target!r} (a model per pair of sites)")
        return [_plain(source), _plain(target)]

    def _fit_covariate_effects(self, X, covariates, site_rows, train_rows) -> np.ndarray | None:
        """Fit the within-site slopes of ``keep_covariates`` on the training scans; returns every scan's
        covariate part by its own site's slopes (n, V), or None when none are kept."""
        names = list(self.keep_covariates)
        self.keep_center_ = np.zeros(len(names), np.float32)
        self.keep_beta_ = np.zeros((2, len(names), X.shape[1]), np.float32)
        if not names:
            return None
        if self.covariate_slopes not in ("pooled", "per-site"):
            raise HarmonizerInputError(f"covariate_slopes must be 'pooled' or 'per-site', "
                                       f"got {self.covariate_slopes!r}")
        values = self._condition_values(covariates, X.shape[0], names, "keep_covariates")
        groups = [list(train_rows)] if self.covariate_slopes == "pooled" else [[r] for r in train_rows]
        betas = []
        for group in groups:                            # all sites together, or one site at a time
            beta = ls.within_site_slopes(values, X, group, self.mask_)                        # (p, V_mask)
            if beta is None:
                where = "within the sites" if len(group) > 1 else f"within site {self.sites_[len(betas)]!r}"
                raise HarmonizerInputError(f"keep_covariates {names} do not vary independently {where} "
                                           "(a column is constant within each site, or columns are collinear)")
            betas.append(beta)
        self.keep_center_ = values[np.concatenate(train_rows)].mean(axis=0).astype(np.float32)
        for domain in range(2):
            self.keep_beta_[domain][:, self.mask_] = betas[domain if len(betas) == 2 else 0]
        part = np.zeros(X.shape, np.float32)
        for domain, r in enumerate(site_rows):
            part[r] = self._covariate_part(values[r], domain)
        return part

    def _covariate_part(self, values: np.ndarray, domain: int) -> np.ndarray:
        """(n, V) float32 mm: the kept covariates' part of each map by site ``domain``'s slopes (0 outside
        the mask)."""
        return ls.covariate_part(values, self.keep_center_, self.keep_beta_[domain])

    def _fit_conditions(self, covariates, n_scans: int):
        names = list(self.condition_on)
        if not names:
            self.cond_mean_ = self.cond_std_ = np.zeros(0, np.float32)
            return None
        values = self._condition_values(covariates, n_scans)
        self.cond_mean_ = values.mean(axis=0).astype(np.float32)
        self.cond_std_ = np.maximum(values.std(axis=0), 1e-6).astype(np.float32)
        return ((values - self.cond_mean_) / self.cond_std_).astype(np.float32)

    def _condition_values(self, covariates, n_scans: int, names=None, option: str = "condition_on") -> np.ndarray:
        return covariate_columns(covariates, n_scans, self.condition_on if names is None else names, option)

    def _split(self, rows):
        frac = float(self.validation_fraction)
        if not 0 <= frac < 1:
            raise HarmonizerInputError(f"validation_fraction must be in [0, 1), got {frac}")
        rng = np.random.default_rng((int(self.seed), 7))
        train, val = [], []
        for r in rows:
            n_val = int(round(frac * len(r)))
            n_val = min(n_val, len(r) - 2)
            shuffled = rng.permutation(r)
            val.append(np.sort(shuffled[:n_val]))
            train.append(np.sort(shuffled[n_val:]))
        return train, val

    def _normalise(self, X: np.ndarray, domain: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, V) mm -> z-scored (n, V) with 0 outside the mask, and the (n, V) bool mask."""
        return ls.zscore_inside(X, self.mean_[domain], self.std_[domain], self.mask_)

    def _domain(self, X, domain: int, cond):
        from surfharm.training import DomainData

        z, mask = self._normalise(X, domain)
        return DomainData(torch.from_numpy(z)[:, None], torch.from_numpy(mask),
                          None if cond is None else torch.from_numpy(cond))

    def _checkpoint_extra(self):
        tensors = {"mean": torch.from_numpy(self.mean_), "std": torch.from_numpy(self.std_),
                   "mask": torch.from_numpy(self.mask_.astype(np.uint8))}
        return tensors, {"sites": self.sites_, "level": self.level_, "condition_on": list(self.condition_on)}

    def _check_resumed(self, meta, path) -> None:
        extra = meta.get("extra", {})
        if extra.get("sites") != self.sites_ or extra.get("level") != self.level_:
            raise HarmonizerInputError(f"checkpoint {path} was trained on sites {extra.get('sites')} at level "
                                       f"{extra.get('level')}; these data have {self.sites_} at level {self.level_}")

    def _validator(self, X, cond, val_rows):
        """Per-epoch validation on held-out scans: cycle error (mm), correlation, site AUROC."""
        def validate(trainer) -> dict[str, float]:
            self.generator_xy_, self.generator_yx_ = trainer.generators.g_xy, trainer.generators.g_yx
            src, tgt = val_rows
            scores: dict[str, float] = {}

            def c(r):
                return None if cond is None else cond[r]

            with _eval_mode(trainer.generators):
                if len(src):
                    fake = self._generate(X[src], 0, c(src))
                    back = self._generate(fake, 1, c(src))
                    scores["cycle_mae_mm"] = float(np.nanmean(np.abs(back - X[src])))
                    m = torch.from_numpy(self.mask_ & np.isfinite(X[src]))
                    scores["r_input"] = float(masked_pearson(torch.from_numpy(np.nan_to_num(X[src]))[:, None],
                                                             torch.from_numpy(np.nan_to_num(fake))[:, None], m).mean())
                    if len(src) >= 4 and len(tgt) >= 4:
                        scores["site_auroc"] = _site_auroc(fake[:, self.mask_], X[tgt][:, self.mask_], self.seed)
            return scores
        return validate

    # -- transform ------------------------------------------------------------------------------------
    def transform(self, X, *, sites=None, covariates=None, direction: str = "forward",
                  batch_size: int = 8) -> np.ndarray:
        """Map source-site scans to the target's appearance (``direction="forward"``) or target-site
        scans to the source's (``"reverse"``); scans of the other site are returned unchanged.

        X: (n_scans, V) mm, NaN outside cortex (kept NaN). Returns (n_scans, V) in X's float dtype
        (the networks run in float32).
        """
        self.check_is_fitted("generator_xy_")
        if direction not in DIRECTIONS:
            raise HarmonizerInputError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        dtype = check_data(X).dtype                # float64 maps come back as float64
        X = check_data(X, dtype=np.float32)
        if X.shape[1] != self.n_features_in_:
            try:
                found = f"level {_level_of(X.shape[1])}"
            except HarmonizerInputError:
                found = "no icosahedral level"
            raise HarmonizerInputError(f"X has {X.shape[1]} features ({found}), but S2SGAN is expecting "
                                       f"{self.n_features_in_} features as input (level {self.level_}, the level "
                                       "it was trained at); resample the maps or train a model at this level")
        sites = require_sites(sites, X.shape[0], "S2SGAN.transform")
        unknown = sorted({str(s) for s in sites if s not in self.sites_})
        if unknown:
            raise HarmonizerInputError(f"site(s) {unknown} are not in this model, which maps {self.sites_[0]!r} "
                                       f"-> {self.sites_[1]!r}")
        cond = None
        if len(self.condition_on):
            values = self._condition_values(covariates, X.shape[0])
            cond = ((values - self.cond_mean_) / self.cond_std_).astype(np.float32)
        kept = None
        if len(self.keep_covariates):
            kept = self._condition_values(covariates, X.shape[0], self.keep_covariates, "keep_covariates")
        moving = 0 if direction == "forward" else 1
        out = X.copy()
        rows = np.flatnonzero(sites == self.sites_[moving])
        for start in range(0, len(rows), int(batch_size)):
            r = rows[start:start + int(batch_size)]
            # The covariates' part by the moving site's slopes out, by the other site's back in (the
            # same with pooled slopes); (batch, V), made per batch.
            part_in = 0.0 if kept is None else self._covariate_part(kept[r], moving)
            part_out = 0.0 if kept is None else self._covariate_part(kept[r], 1 - moving)
            out[r] = self._generate(X[r] - part_in, moving, None if cond is None else cond[r]) + part_out
        return out.astype(dtype, copy=False)

    def _generate(self, X: np.ndarray, domain: int, cond) -> np.ndarray:
        """Maps of site ``domain`` (0 source, 1 target) -> the other site's appearance, in mm."""
        fake = self._generator_z(X, domain, cond)
        if getattr(self, "output_mean_", None) is not None:
            fake = ls.standardize(fake, self.output_mean_[domain], self.output_std_[domain])
        other = 1 - domain
        mm = ls.unstandardize(fake, self.mean_[other], self.std_[other])
        mask = np.isfinite(X) & self.mask_
        return np.where(mask, mm, X).astype(np.float32)   # outside the mask: unchanged (NaN stays NaN)

    def _generator_z(self, X: np.ndarray, domain: int, cond) -> np.ndarray:
        """The generator's raw output (n, V) in the other site's z-units for maps of site ``domain``."""
        generator = self.generator_xy_ if domain == 0 else self.generator_yx_
        device = next(generator.parameters()).device
        z, _ = self._normalise(X, domain)
        with torch.no_grad():
            c = None if cond is None else torch.from_numpy(cond).to(device)
            return generator(torch.from_numpy(z)[:, None].to(device), c)[:, 0].float().cpu().numpy()

    # -- model file ------------------------------------------------------------------------------------
    def _get_state(self):
        import surfharm

        tensors = {f"generator_xy.{k}": v for k, v in self.generator_xy_.state_dict().items()}
        tensors.update({f"generator_yx.{k}": v for k, v in self.generator_yx_.state_dict().items()})
        tensors.update({"mean": torch.from_numpy(self.mean_), "std": torch.from_numpy(self.std_),
                        "mask": torch.from_numpy(self.mask_.astype(np.uint8)),
                        "cond_mean": torch.from_numpy(self.cond_mean_), "cond_std": torch.from_numpy(self.cond_std_),
                        "keep_center": torch.from_numpy(self.keep_center_),
                        "keep_beta": torch.from_numpy(self.keep_beta_)})
        if self.output_mean_ is not None:
            tensors.update({"output_mean": torch.from_numpy(self.output_mean_),
                            "output_std": torch.from_numpy(self.output_std_)})
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"format": MODEL_FORMAT, "format_version": 1, "surfharm_version": surfharm.__version__,
                "sites": self.sites_, "level": self.level_, "n_features": self.n_features_in_,
                "history": self.history_}
        return tensors, meta

    def _set_state(self, arrays, meta) -> None:
        if meta.get("format") != MODEL_FORMAT:
            raise HarmonizerInputError(f"model metadata names format {meta.get('format')!r}; expected {MODEL_FORMAT!r}")
        self.sites_, self.level_, self.n_features_in_ = meta["sites"], int(meta["level"]), int(meta["n_features"])
        self.history_ = meta.get("history", [])
        self.mean_, self.std_ = arrays["mean"], arrays["std"]
        self.mask_ = arrays["mask"].astype(bool)
        self.cond_mean_, self.cond_std_ = arrays["cond_mean"], arrays["cond_std"]
        self.output_mean_ = arrays.get("output_mean")
        self.output_std_ = arrays.get("output_std")
        n_keep = len(self.keep_covariates)
        self.keep_center_ = arrays.get("keep_center", np.zeros(n_keep, np.float32))
        self.keep_beta_ = arrays.get("keep_beta", np.zeros((2, n_keep, self.n_features_in_), np.float32))
        if self.keep_beta_.ndim == 2:                  # files written before per-site slopes: pooled
            self.keep_beta_ = np.stack([self.keep_beta_, self.keep_beta_])
        config = self.training_config(self.level_)
        for name in ("generator_xy", "generator_yx"):
            net = SphericalGenerator(1, self.level_, cond_channels=config.cond_channels, depth=config.depth,
                                     base_channels=config.base_channels, residual=config.residual)
            setattr(self, f"{name}_", load_weights(net, arrays, name).to(self.device).eval())

    def _check_state(self, check: StateCheck) -> None:
        shape = (2, self.n_features_in_)
        check.shape("mask", self.mask_, (self.n_features_in_,))
        for name in ("mean", "std"):
            check.shape(name, getattr(self, name + "_"), shape)
        check.finite("mean", self.mean_, self.mask_)
        check.finite("std", self.std_, self.mask_, positive=True)
        for network in ("generator_xy", "generator_yx"):
            check_weights(check, getattr(self, network + "_"), network)
        if self.output_mean_ is not None:
            check.finite("output_mean", self.output_mean_, np.broadcast_to(self.mask_, shape))
            check.finite("output_std", self.output_std_, np.broadcast_to(self.mask_, shape), positive=True)


# -- helpers --------------------------------------------------------------------------------------------

def _level_of(n_vertices: int) -> int:
    """:func:`spherical_ops.level_of` with S2SGAN's message and its minimum level, as HarmonizerInputError."""
    try:
        level = level_of(n_vertices)
    except ValueError:
        raise HarmonizerInputError(
            f"S2SGAN works on icosahedral maps; got {n_vertices} vertices, expected one of "
            f"{', '.join(str(v) for v in VERTEX_COUNTS)} (levels 0-7; fsaverage5 = 10242)") from None
    if level < 2:
        raise HarmonizerInputError(f"S2SGAN needs icosahedral level >= 2, got level {level} ({n_vertices} vertices)")
    return level


def _plain(label):
    """A site label as a JSON-able Python value (numpy scalars -> int/str)."""
    return label.item() if isinstance(label, np.generic) else label


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _site_auroc(a: np.ndarray, b: np.ndarray, seed: int) -> float:
    """Cross-validated AUROC of a logistic regression telling maps ``a`` from maps ``b``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    X = np.concatenate([a, b]).astype(np.float64)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    folds = StratifiedKFold(n_splits=min(4, len(a), len(b)), shuffle=True, random_state=seed)
    score = cross_val_predict(LogisticRegression(C=1.0, max_iter=500), X, y, cv=folds, method="decision_function")
    return float(roc_auc_score(y, score))
