"""DeepComBat (Hu et al., Hum Brain Mapp 2024): ComBat in the latent space of a conditional VAE, and on its residuals.

Steps (fit), for an ROI table or (through the PCA front end below) vertex maps:

1. Features are z-scored with the training scans' means and standard deviations; covariates become
   design columns (numbers, indicator columns of categories) min-max scaled to [0, 1] on the
   training scans; sites are one-hot.
2. A conditional VAE (:class:`surfharm.models.cvae.ConditionalVAE`) is trained: encoder
   ``[x, site, covariates] -> latent``, decoder ``[z, site, covariates] -> x``, 3 tanh hidden layers of
   widths evenly spaced between p and the latent size ``2^round(log2(p / 4))``, linear last layer.
   Loss = summed squared error / n + beta x lambda x KL / n over a batch of n scans; schedule
   (:func:`surfharm.models.cvae.kl_schedule`): 5 epochs as an autoencoder (lambda 0), 30 epochs of
   cyclic KL annealing (beta 0 -> 1 over 5 epochs, then held at 1 until the cycle of 10 epochs ends;
   lambda 1), 5 epochs at lambda 0.1; Adam, learning rate 0.01, batches of 64 scans.
3. Harmonization: ``mu = enc(x)``; ComBat on the latent means (``latent_model_``, with the covariates);
   the harmonized means are decoded with the reference site's code; ComBat (``residual_method="combat"``)
   or CovBat (``"covbat"``) on the residuals ``x - dec(mu, own site)`` (``residual_model_``);
   output = decoded + harmonized residual, brought back to the data's units.

The networks and both fitted ComBat/CovBat models are the model: ``transform`` of new scans (of the
training sites) reuses every training estimate, and ``transform`` of the training scans repeats
``fit_transform`` exactly. Model file: one ``.safetensors`` file holding the network weights and the
inner models' arrays (prefixed ``latent_model.``, ``residual_model.``, ``pca_residual_model.``) and the
sphere front end's weights (``sphere.``), with
JSON metadata (sites, sizes, covariate coding, training history, the inner models' metadata).

Missing values (NaN) count as the feature's training mean (0 after z-scoring) in the networks' inputs,
are left out of the reconstruction loss and of the ComBat statistics, and stay NaN in the output.

Vertex maps (the PCA front end, ``front_end="auto"`` beyond 1024 features, or ``"pca"``): the MLP
cannot take 163842 features (its first layer alone would hold ~10^10 weights), so the z-scored maps
are projected on the first ``n_components`` (256) principal components of the training scans
(computed from their Gram matrix, one block of vertices at a time, as CovBat does); DeepComBat
harmonizes the scores (scaled by one common factor, so that the reconstruction loss stays the squared
error of the maps in z-units) and ComBat (``pca_residual_model_``) the part of each map outside the
components; the output is the sum of both.

The sphere front end (``front_end="sphere"``, maps on an icosphere in FreeSurfer order): a spherical
convolutional autoencoder (:class:`surfharm.models.sphere_autoencoder.SphereAutoencoder`: 1-ring
convolutions and mean pooling down to ``sphere_level`` (2) with ``sphere_channels`` (4) channels,
4 x 162 = 648 features whatever the maps' level; transposed convolutions back), trained first, without
the site, to reconstruct the z-scored maps (``sphere_epochs`` 20, Adam at ``sphere_lr`` 0.003). Its
codes, scaled by one common factor, replace the PCA scores as the CVAE's input; the harmonized codes are
decoded by its decoder, and the part of each map it does not reconstruct (``z - dec(enc(z))``, NaN kept)
is harmonized by ComBat (``pca_residual_model_``) exactly as the PCA front end's remainder. A code of
4 x 642 (level 3) reconstructs better, but the published MLP (latent 512, learning rate 0.01) diverged on
it. The default stays PCA (``"auto"``); see the comparison below.
What it gives was measured on the simulated ``adult`` cohort at level 5 (4 sites x 50 adults + 8
traveling subjects, 232 scans x 10242 vertices, 5-fold cross-validation, one run of
``benchmarks/bench_deepcombat.py --part vertex``; CPU; age R² of the site-free truth 0.210; MAE of
the traveling subjects' scans to their scan at site A and to their site-free map; K components, at
most half the training scans):

=====================  ==========  ==========  ====================  ===================  ======
method                 site AUROC  age R²      MAE to target, mm     MAE to truth, mm     fit s
=====================  ==========  ==========  ====================  ===================  ======
raw                    1.000       0.171       0.167                 0.126                0.2
ComBat                 0.497       0.204       0.069                 0.064                0.1
CovBat                 0.462       0.204       0.071                 0.066                0.8
DeepComBat, K = n/2    0.428       0.209       0.081                 0.112                3.4
DeepComBat, K = 32     0.459       0.174       0.075                 0.109                1.4
DeepComBat, sphere     0.697       0.197       0.098                 0.092                190
=====================  ==========  ==========  ====================  ===================  ======

(The sphere row: a second run, ``--front-end both``, on a shared CPU under load, which also repeated the
raw, ComBat and DeepComBat-PCA rows to three decimals; fit seconds of that run.) The sphere front end
reconstructs held-out maps better (it leaves 0.387 of their z-scored variance, PCA with K = n/2 0.496;
fit on 4/5 of the study scans), but DeepComBat on its 648-feature code under-corrects (AUROC 0.70, kBET
rejection 0.44 against ComBat's 0.02) and its traveling subjects agree less (0.098 mm): with 185 training
scans the CVAE on the code does not reach the site effect that the PCA scores expose, and the remainder's
ComBat cannot remove what the decoder puts back. One fit on the 232 scans, idle CPU, one thread, in a
fresh process: 38.5 s and 238 MB peak memory growth (PCA front end: 1.3 s, 109 MB). Its memory grows with
the vertices only through a batch's activations (16 scans of 8-32 channels): two training steps and the
encoding/decoding of 32 scans grow the peak by 452 MB at level 6 and 1.1 GB at level 7 (163842
vertices), so it fits there, as the PCA front end does (its K x V components: 120 MB at K = 92).

It is *not* as good as ComBat on vertex maps: it keeps the age effect best (0.209 of the truth's
0.210) but over-corrects the site (AUROC 0.43: held-out scans are marked by the estimation error of
the latent model) and its traveling subjects agree less (0.081 mm against 0.069). Decoding with the
reference site's code maps every scan to that site's appearance, hence the larger distance to the
site-free truth. With 32 components the age effect is lost (0.174). Prefer ComBat or CovBat for vertex
maps; of the two front ends PCA is the default (better site removal and traveling-subject agreement, 30
times faster); both are there so that DeepComBat can be run and compared at that scale.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from surfharm.harmonize import _design
from surfharm.harmonize.base import (
    Harmonizer,
    HarmonizerInputError,
    StateCheck,
    check_data,
    check_n_features,
    register,
    require_sites,
)
from surfharm.harmonize.combat import ComBat
from surfharm.harmonize.covbat import CovBat

#: Beyond this many features, ``front_end="auto"`` projects on principal components first.
MAX_DIRECT_FEATURES = 1024
#: Bytes of float64 per (n_scans x vertices) block in the PCA front end.
_BLOCK_BYTES = 2**25
_RESIDUAL_METHODS = {"combat": ComBat, "covbat": CovBat}
_FRONT_ENDS = ("auto", "none", "pca", "sphere")
#: Scans per batch when the sphere front end trains and is applied.
_SPHERE_BATCH = 16


@register("deepcombat")
class DeepComBat(Harmonizer):
    """DeepComBat: conditional VAE + ComBat on its latent means + ComBat/CovBat on its residuals.

    Parameters
    ----------
    latent_dim : int, optional
        Latent size; default ``2^round(log2(p / 4))`` (p: features given to the network).
    n_hidden : int
        Hidden layers of encoder and decoder (3).
    ae_epochs, anneal_epochs, cycle_epochs, ramp_epochs, final_epochs : int
        The schedule (5, 30, 10, 5, 5): autoencoder epochs, cyclic-annealing epochs, length of one
        annealing cycle, epochs over which beta rises from 0 to 1 in a cycle, final epochs.
    kl_weight, final_kl_weight : float
        lambda during the annealing (1) and in the final epochs (0.1).
    lr, batch_size : Adam learning rate (0.01) and scans per batch (64).
    residual_method : "combat" or "covbat"
        What harmonizes the residuals ``x - dec(mu, own site)``.
    eb : bool
        Empirical Bayes in the latent and residual ComBat models (default True).
    reference_site : site label, optional
        Whose code decodes the harmonized latent means; default the first site in sorted order.
    front_end : "auto", "none", "pca" or "sphere"
        "pca" projects on principal components first (vertex maps); "auto" does so beyond 1024 features;
        "sphere" encodes the maps with a spherical convolutional autoencoder first (maps on an icosphere).
    n_components : int
        Principal components of the PCA front end (at most the training scans' rank).
    sphere_level, sphere_channels : int
        Level and channels of the sphere front end's code (2, 4: 4 x 162 = 648 features).
    sphere_epochs, sphere_lr : int, float
        Training of the sphere front end (20 epochs of Adam at 0.003, batches of 16 scans).
    seed : int
        Seeds the initialisation, the batches and the posterior draws (deterministic on CPU).
    device : str
        Where the networks train ("cpu" or "cuda"); they are applied on the CPU.
    progress : bool
        Show a progress bar over the epochs.

    Learned attributes
    ------------------
    sites_, n_features_in_, reference_index_;  mean_, scale_ : (G,) z-scoring of the features
    cov_encoder_, cov_min_, cov_range_ : covariate design and its [0, 1] scaling
    network_ : the trained :class:`~surfharm.models.cvae.ConditionalVAE`;  history_ : per-epoch losses
    latent_model_ : ComBat on the latent means;  residual_model_ : ComBat or CovBat on the residuals
    components_ : (K, G) PCA axes (K = 0 without the front end);  score_scale_ : scale of the scores
    sphere_network_ : the trained :class:`~surfharm.models.sphere_autoencoder.SphereAutoencoder` (None
    without);  sphere_history_ : its per-epoch reconstruction error
    pca_residual_model_ : ComBat on the part of the maps the front end does not keep (the name is the PCA
    front end's; the sphere front end's remainder goes there too; None without a front end)
    """

    model_suffix = ".safetensors"
    fitted_attribute = "network_"

    def __init__(self, *, latent_dim: int | None = None, n_hidden: int = 3, ae_epochs: int = 5,
                 anneal_epochs: int = 30, cycle_epochs: int = 10, ramp_epochs: int = 5, final_epochs: int = 5,
                 kl_weight: float = 1.0, final_kl_weight: float = 0.1, lr: float = 0.01, batch_size: int = 64,
                 residual_method: str = "combat", eb: bool = True, reference_site=None, front_end: str = "auto",
                 n_components: int = 256, sphere_level: int = 2, sphere_channels: int = 4, sphere_epochs: int = 20,
                 sphere_lr: float = 0.003, seed: int = 0, device: str = "cpu", progress: bool = False):
        self.latent_dim = latent_dim
        self.n_hidden = n_hidden
        self.ae_epochs = ae_epochs
        self.anneal_epochs = anneal_epochs
        self.cycle_epochs = cycle_epochs
        self.ramp_epochs = ramp_epochs
        self.final_epochs = final_epochs
        self.kl_weight = kl_weight
        self.final_kl_weight = final_kl_weight
        self.lr = lr
        self.batch_size = batch_size
        self.residual_method = residual_method
        self.eb = eb
        self.reference_site = reference_site
        self.front_end = front_end
        self.n_components = n_components
        self.sphere_level = sphere_level
        self.sphere_channels = sphere_channels
        self.sphere_epochs = sphere_epochs
        self.sphere_lr = sphere_lr
        self.seed = seed
        self.device = device
        self.progress = progress

    # -- schedule -------------------------------------------------------------------------------------
    @property
    def n_epochs(self) -> int:
        return int(self.ae_epochs) + int(self.anneal_epochs) + int(self.final_epochs)

    def schedule(self, epoch: int) -> tuple[float, float]:
        """``(beta, lambda)`` of ``epoch`` (0-based) under this model's settings."""
        from surfharm.models.cvae import kl_schedule

        return kl_schedule(epoch, ae_epochs=int(self.ae_epochs), anneal_epochs=int(self.anneal_epochs),
                           cycle_epochs=int(self.cycle_epochs), ramp_epochs=int(self.ramp_epochs),
                           kl_weight=float(self.kl_weight), final_kl_weight=float(self.final_kl_weight))

    # -- fit ------------------------------------------------------------------------------------------
    def fit(self, X, y=None, *, sites=None, covariates=None) -> "DeepComBat":
        """Train the networks and fit the latent and residual models on ``X`` (n_scans, n_features)."""
        self._check_options()
        self.__dict__.pop("network_", None)
        X = check_data(X)
        n_scans, n_features = X.shape
        sites = require_sites(sites, n_scans, f"{type(self).__name__}.fit")
        self.sites_ = _design.site_levels(sites)
        codes = _design.site_codes(sites, self.sites_)
        small = [str(s) for s, c in zip(self.sites_, np.bincount(codes, minlength=len(self.sites_))) if c < 2]
        if small:
            raise HarmonizerInputError(f"site(s) {small} have a single scan: DeepComBat's ComBat steps need at least "
                                       "2 scans per site")
        self.reference_index_ = 0
        if self.reference_site is not None:
            keys = [str(s) for s in self.sites_]
            if str(self.reference_site) not in keys:
                raise HarmonizerInputError(f"reference_site {self.reference_site!r} is not among the sites {keys}")
            self.reference_index_ = keys.index(str(self.reference_site))
        self.cov_encoder_ = _design.CovariateEncoder().fit(covariates, n_scans)
        design = self.cov_encoder_.transform(covariates, n_scans)
        low = design.min(axis=0) if design.shape[0] else np.zeros(design.shape[1])
        span = (design.max(axis=0) - low) if design.shape[0] else np.ones(design.shape[1])
        self.cov_min_, self.cov_range_ = low, np.where(span > 0, span, 1.0)
        self.n_features_in_ = n_features

        self._fit_standardisation(X)
        use_pca = self.front_end == "pca" or (self.front_end == "auto" and n_features > MAX_DIRECT_FEATURES)
        self.components_ = np.zeros((0, n_features))
        self.score_scale_ = np.ones(1)
        self.sphere_network_, self.sphere_history_ = None, []
        if use_pca:
            self._fit_components(X)
        elif self.front_end == "sphere":
            self._fit_sphere(X)
        F, pca_residual = self._network_input(X)
        C = self._covariate_input(covariates, n_scans)
        S = _design.one_hot(codes, len(self.sites_))
        self.network_, self.history_ = self._train(F, S, C)

        mu = self._encode(F, S, C)
        self.latent_model_ = ComBat(eb=self.eb).fit(mu, sites=sites, covariates=covariates)
        residual = F - self._decode(mu, S, C)
        residual_cls = _RESIDUAL_METHODS[self.residual_method]
        self.residual_model_ = residual_cls(eb=self.eb).fit(residual, sites=sites, covariates=covariates)
        self.pca_residual_model_ = None
        if pca_residual is not None:
            self.pca_residual_model_ = ComBat(eb=self.eb).fit(pca_residual, sites=sites, covariates=covariates)
        return self

    def _check_options(self) -> None:
        if self.residual_method not in _RESIDUAL_METHODS:
            raise HarmonizerInputError(f"residual_method must be 'combat' or 'covbat', got {self.residual_method!r}")
        if self.front_end not in _FRONT_ENDS:
            raise HarmonizerInputError(f"front_end must be one of {_FRONT_ENDS}, got {self.front_end!r}")
        for name in ("n_hidden", "batch_size", "n_components", "sphere_channels", "sphere_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise HarmonizerInputError(f"{name} must be a positive int, got {value!r}")
        for name in ("ae_epochs", "anneal_epochs", "final_epochs", "ramp_epochs", "cycle_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise HarmonizerInputError(f"{name} must be an int >= 0, got {value!r}")
        if self.n_epochs < 1:
            raise HarmonizerInputError("the schedule has no epoch: give ae_epochs, anneal_epochs or final_epochs > 0")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise HarmonizerInputError(f"lr must be a positive number, got {self.lr!r}")
        if isinstance(self.sphere_level, bool) or not isinstance(self.sphere_level, (int, np.integer)) \
                or self.sphere_level < 0:
            raise HarmonizerInputError(f"sphere_level must be an int >= 0, got {self.sphere_level!r}")
        if not (isinstance(self.sphere_lr, (int, float)) and self.sphere_lr > 0 and math.isfinite(self.sphere_lr)):
            raise HarmonizerInputError(f"sphere_lr must be a positive number, got {self.sphere_lr!r}")
        if self.latent_dim is not None and (not isinstance(self.latent_dim, (int, np.integer)) or self.latent_dim < 2):
            raise HarmonizerInputError(f"latent_dim must be an int >= 2 or None, got {self.latent_dim!r}")

    def _fit_standardisation(self, X) -> None:
        n_features = X.shape[1]
        self.mean_, self.scale_ = np.zeros(n_features), np.ones(n_features)
        for block in self._blocks(X):
            values = np.asarray(X[:, block], dtype=np.float64)
            observed = np.isfinite(values)
            count = observed.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(observed, values, 0.0).sum(axis=0) / np.maximum(count, 1)
                dev = np.where(observed, values - mean, 0.0)
                sd = np.sqrt((dev * dev).sum(axis=0) / (count - 1))
            self.mean_[block] = mean
            self.scale_[block] = np.where((count >= 2) & np.isfinite(sd) & (sd > 0), sd, 1.0)

    def _blocks(self, X):
        width = int(np.clip(_BLOCK_BYTES // (8 * max(X.shape[0], 1)), 256, 1 << 20))
        for start in range(0, X.shape[1], width):
            yield slice(start, min(start + width, X.shape[1]))

    def _z(self, X, block: slice) -> np.ndarray:
        """(n_scans, B) z-scored features (float64, NaN kept)."""
        return (np.asarray(X[:, block], dtype=np.float64) - self.mean_[block]) / self.scale_[block]

    def _fit_components(self, X) -> None:
        """PCA of the z-scored training maps (NaN as 0) from their Gram matrix, block by block."""
        n_scans = X.shape[0]
        gram = np.zeros((n_scans, n_scans))
        for block in self._blocks(X):
            Z = np.nan_to_num(self._z(X, block))
            gram += Z @ Z.T
        values, vectors = np.linalg.eigh(gram)
        order = np.argsort(values)[::-1]
        values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
        tol = values[0] * n_scans * np.finfo(float).eps if values.size else 0.0
        # At most half the scans: the part outside the components (ComBat's) keeps residual variance of
        # its own to estimate site scales from, in the training scans as in new ones.
        k = int(min(self.n_components, (values > tol).sum(), n_scans // 2))
        if k < 2:
            raise HarmonizerInputError(f"the PCA front end found {k} component(s) with variance in {n_scans} scans; "
                                       "it needs at least 2")
        left = vectors[:, :k] / np.sqrt(values[:k])
        self.components_ = np.zeros((k, X.shape[1]))
        for block in self._blocks(X):
            self.components_[:, block] = left.T @ np.nan_to_num(self._z(X, block))
        # Signs: each component's largest loading positive (the result must not depend on the eigensolver).
        peak = self.components_[np.arange(k), np.argmax(np.abs(self.components_), axis=1)]
        self.components_ *= np.where(peak < 0, -1.0, 1.0)[:, None]
        scores = np.zeros((n_scans, k))
        for block in self._blocks(X):
            scores += np.nan_to_num(self._z(X, block)) @ self.components_[:, block].T
        self.score_scale_ = np.array([max(float(np.sqrt(np.mean(scores * scores))), 1e-12)])

    def _fit_sphere(self, X) -> None:
        """Train the sphere front end on the z-scored training maps and set ``score_scale_`` (RMS of the codes)."""
        from surfharm.models.sphere_autoencoder import SphereAutoencoder, map_level, train_autoencoder

        try:
            level = map_level(X.shape[1])
        except ValueError as err:
            raise HarmonizerInputError(f"front_end='sphere' needs vertex maps on an icosphere (10 * 4**level + 2 "
                                       f"vertices, FreeSurfer order); got {X.shape[1]} features: {err}") from None
        if self.sphere_level > level:
            raise HarmonizerInputError(f"sphere_level {self.sphere_level} is finer than the maps' level {level}")
        device = self._torch_device()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            network = SphereAutoencoder(level, bottleneck_level=int(self.sphere_level),
                                        code_channels=int(self.sphere_channels))
        Z = self._z(X, slice(0, X.shape[1]))
        self.sphere_history_ = train_autoencoder(network, Z, epochs=int(self.sphere_epochs), lr=float(self.sphere_lr),
                                                 batch_size=_SPHERE_BATCH, seed=int(self.seed), device=device,
                                                 progress=bool(self.progress))
        self.sphere_network_ = network
        codes = self._sphere_apply("encode", np.nan_to_num(Z))
        self.score_scale_ = np.array([max(float(np.sqrt(np.mean(codes * codes))), 1e-12)])

    def _sphere_apply(self, method: str, A: np.ndarray) -> np.ndarray:
        """``sphere_network_.encode`` or ``.decode`` over the rows of ``A``, in batches, float64."""
        from surfharm.models.sphere_autoencoder import apply_in_batches

        return apply_in_batches(getattr(self.sphere_network_, method), A, _SPHERE_BATCH)

    def _torch_device(self) -> torch.device:
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise HarmonizerInputError(f"device {self.device!r} asked for but CUDA is not available; use device='cpu'")
        return device

    def _network_input(self, X) -> tuple[np.ndarray, np.ndarray | None]:
        """``(F, R)``: what the network harmonizes (z-scores, or scaled PCA scores or sphere codes) and,
        with a front end, the z-scored maps' part it does not keep (NaN kept), else None."""
        if self.sphere_network_ is not None:
            # The remainder the autoencoder does not reconstruct, as the PCA front end's part outside
            # its components: ComBat harmonizes it (pca_residual_model_).
            dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
            codes = np.zeros((X.shape[0], self.sphere_network_.code_size))
            residual = np.empty(X.shape, dtype=dtype)
            for start in range(0, X.shape[0], _SPHERE_BATCH):
                rows = slice(start, min(start + _SPHERE_BATCH, X.shape[0]))
                Z = self._z(X[rows], slice(0, X.shape[1]))
                codes[rows] = self._sphere_apply("encode", np.nan_to_num(Z))
                residual[rows] = Z - self._sphere_apply("decode", codes[rows])
            return codes / self.score_scale_[0], residual
        if not self.components_.shape[0]:
            return self._z(X, slice(0, X.shape[1])), None
        k = self.components_.shape[0]
        scores = np.zeros((X.shape[0], k))
        for block in self._blocks(X):
            scores += np.nan_to_num(self._z(X, block)) @ self.components_[:, block].T
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        residual = np.empty(X.shape, dtype=dtype)
        for block in self._blocks(X):
            residual[:, block] = self._z(X, block) - scores @ self.components_[:, block]
        return scores / self.score_scale_[0], residual

    def _covariate_input(self, covariates, n_scans: int) -> np.ndarray:
        design = self.cov_encoder_.transform(covariates, n_scans)
        return (design - self.cov_min_) / self.cov_range_

    # -- the networks ---------------------------------------------------------------------------------
    def _train(self, F: np.ndarray, S: np.ndarray, C: np.ndarray):
        from surfharm._progress import progress_bar
        from surfharm.models.cvae import ConditionalVAE, cvae_loss
        from surfharm.training.trainer import TrainingDivergedError

        device = self._torch_device()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            network = ConditionalVAE(F.shape[1], S.shape[1], C.shape[1], latent_dim=self.latent_dim,
                                     n_hidden=int(self.n_hidden)).to(device)
        generator = torch.Generator(device=device).manual_seed(int(self.seed))
        optimizer = torch.optim.Adam(network.parameters(), lr=float(self.lr))
        observed = torch.as_tensor(np.isfinite(F), device=device)
        x_all = torch.as_tensor(np.nan_to_num(F), dtype=torch.float32, device=device)
        s_all = torch.as_tensor(S, dtype=torch.float32, device=device)
        c_all = torch.as_tensor(C, dtype=torch.float32, device=device)
        n, batch = F.shape[0], int(self.batch_size)
        history: list[dict[str, float]] = []
        bar = progress_bar(bool(self.progress), total=self.n_epochs, desc="DeepComBat", unit="epoch")
        network.train()
        threads = torch.get_num_threads()
        try:
            # The networks are small: one CPU thread is several times faster than a few, whose
            # start-up per operation dominates (and the result does not depend on the thread count).
            torch.set_num_threads(1)
            for epoch in range(self.n_epochs):
                beta, lam = self.schedule(epoch)
                order = torch.as_tensor(np.random.default_rng((int(self.seed), epoch)).permutation(n), device=device)
                sums = np.zeros(3)
                for start in range(0, n, batch):
                    rows = order[start:start + batch]
                    recon, mu, logvar = network(x_all[rows], s_all[rows], c_all[rows], generator=generator)
                    loss, sse, kl = cvae_loss(recon, x_all[rows], mu, logvar, beta * lam, observed[rows])
                    values = torch.stack([loss, sse, kl]).detach().cpu().numpy().astype(np.float64)
                    if not np.isfinite(values).all():
                        raise TrainingDivergedError(
                            f"DeepComBat training stopped in epoch {epoch} (beta {beta:g}, lambda {lam:g}): "
                            f"non-finite loss (loss={values[0]:.4g}, squared error={values[1]:.4g}, "
                            f"KL={values[2]:.4g}). "
                            f"Lower the learning rate (now {self.lr:g}) or check the input for extreme values")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    sums += values * rows.shape[0]
                history.append({"epoch": epoch + 1, "beta": beta, "lambda": lam, "loss": float(sums[0] / n),
                                "sse": float(sums[1] / n), "kl": float(sums[2] / n)})
                bar.update(1)
                bar.set_postfix({"loss": f"{sums[0] / n:.3f}", "kl": f"{sums[2] / n:.3f}"})
        finally:
            torch.set_num_threads(threads)
            bar.close()
        network.eval()
        return network.cpu(), history

    def _encode(self, F, S, C) -> np.ndarray:
        with torch.no_grad():
            mu, _ = self.network_.encode(*_tensors(np.nan_to_num(F), S, C))
        return mu.double().numpy()

    def _decode(self, Z, S, C) -> np.ndarray:
        with torch.no_grad():
            out = self.network_.decode(*_tensors(Z, S, C))
        return out.double().numpy()

    # -- transform ------------------------------------------------------------------------------------
    def transform(self, X, *, sites=None, covariates=None) -> np.ndarray:
        """Harmonize ``X`` with the stored networks and models; same shape, dtype and NaN pattern."""
        self.check_is_fitted()
        X = check_data(X)
        check_n_features(self, X)
        n_scans = X.shape[0]
        sites = require_sites(sites, n_scans, f"{type(self).__name__}.transform")
        codes = _design.site_codes(sites, self.sites_)
        S = _design.one_hot(codes, len(self.sites_))
        C = self._covariate_input(covariates, n_scans)
        F, pca_residual = self._network_input(X)
        mu = self._encode(F, S, C)
        mu_h = np.asarray(self.latent_model_.transform(mu, sites=sites, covariates=covariates))
        reference = np.zeros_like(S)
        reference[:, self.reference_index_] = 1.0
        residual = F - self._decode(mu, S, C)
        residual_h = np.asarray(self.residual_model_.transform(residual, sites=sites, covariates=covariates))
        F_h = self._decode(mu_h, reference, C) + residual_h
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        out = np.empty(X.shape, dtype=dtype)
        if pca_residual is None:
            out[:] = F_h * self.scale_ + self.mean_
        elif self.sphere_network_ is not None:
            rest = self.pca_residual_model_.transform(pca_residual, sites=sites, covariates=covariates)
            codes = F_h * self.score_scale_[0]
            for start in range(0, n_scans, _SPHERE_BATCH):
                rows = slice(start, min(start + _SPHERE_BATCH, n_scans))
                z = self._sphere_apply("decode", codes[rows]) + rest[rows]
                out[rows] = z * self.scale_ + self.mean_
        else:
            rest = self.pca_residual_model_.transform(pca_residual, sites=sites, covariates=covariates)
            scores = F_h * self.score_scale_[0]
            for block in self._blocks(X):
                z = scores @ self.components_[:, block] + rest[:, block]
                out[:, block] = z * self.scale_[block] + self.mean_[block]
        out[np.isnan(X)] = np.nan
        return out

    # -- persistence ----------------------------------------------------------------------------------
    _INNER = ("latent_model_", "residual_model_", "pca_residual_model_")
    _ARRAYS = ("mean_", "scale_", "cov_min_", "cov_range_", "components_", "score_scale_")

    def _get_state(self):
        arrays: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in self._ARRAYS}
        arrays.update({f"network.{k}": v.detach().cpu().contiguous() for k, v in self.network_.state_dict().items()})
        sphere = None
        if self.sphere_network_ is not None:
            sphere = self.sphere_network_.config()
            arrays.update({f"sphere.{k}": v.detach().cpu().contiguous()
                           for k, v in self.sphere_network_.state_dict().items()})
        inner_meta = {}
        for name in self._INNER:
            model = getattr(self, name)
            if model is None:
                inner_meta[name] = None
                continue
            inner_arrays, meta = model._get_state()
            prefix = name.rstrip("_") + "."
            arrays.update({prefix + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inner_arrays.items()})
            inner_meta[name] = {"method": model.registry_name, "params": model._file_params(), **meta}
        meta = {"sites": list(self.sites_), "n_features": int(self.n_features_in_),
                "reference_index": int(self.reference_index_), "covariates": self.cov_encoder_.to_state(),
                "network": {"n_features": self.network_.n_features, "n_sites": self.network_.n_sites,
                            "n_covariates": self.network_.n_covariates, "latent_dim": self.network_.latent_dim,
                            "widths": list(self.network_.widths)},
                "history": self.history_, "inner_models": inner_meta, "sphere": sphere,
                "sphere_history": self.sphere_history_}
        return arrays, meta

    def _set_state(self, arrays, meta) -> None:
        from surfharm.models.cvae import ConditionalVAE

        for name in self._ARRAYS:
            setattr(self, name, np.asarray(arrays[name]))
        self.sites_ = list(meta["sites"])
        self.n_features_in_ = int(meta["n_features"])
        self.reference_index_ = int(meta["reference_index"])
        self.cov_encoder_ = _design.CovariateEncoder.from_state(meta["covariates"])
        self.history_ = list(meta.get("history", []))
        net = meta["network"]
        network = ConditionalVAE(net["n_features"], net["n_sites"], net["n_covariates"], latent_dim=net["latent_dim"],
                                 n_hidden=len(net["widths"]))
        weights = {k[len("network."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                   if k.startswith("network.")}
        network.load_state_dict(weights)
        self.network_ = network.eval()
        self.sphere_network_, self.sphere_history_ = None, list(meta.get("sphere_history", []))
        if meta.get("sphere") is not None:
            from surfharm.models.sphere_autoencoder import SphereAutoencoder

            config = dict(meta["sphere"])
            sphere = SphereAutoencoder(config.pop("level"), **config)
            sphere.load_state_dict({k[len("sphere."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                                    if k.startswith("sphere.")})
            self.sphere_network_ = sphere.eval()
        for name, inner in meta["inner_models"].items():
            if inner is None:
                setattr(self, name, None)
                continue
            inner = dict(inner)
            cls = _RESIDUAL_METHODS[inner.pop("method")]
            model = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in inner.pop("params").items()})
            prefix = name.rstrip("_") + "."
            model._set_state({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}, inner)
            setattr(self, name, model)

    def _check_state(self, check: StateCheck) -> None:
        n_features = self.n_features_in_
        for name in ("mean_", "scale_"):
            check.shape(name, getattr(self, name), (n_features,))
        check.finite("mean_", self.mean_)
        check.finite("scale_", self.scale_, positive=True)
        check.shape("components_", self.components_, (None, n_features))
        check.finite("components_", self.components_)
        check.finite("score_scale_", self.score_scale_, positive=True)
        for key, value in self.network_.state_dict().items():
            check.finite(f"network.{key}", value.numpy())
        for name in self._INNER:
            model = getattr(self, name)
            if model is not None:
                model._check_state(check)
        from surfharm.errors import ModelFileError

        if (self.components_.shape[0] or self.sphere_network_ is not None) and self.pca_residual_model_ is None:
            raise ModelFileError(f"{check.path}: the model has a front end but no model of its residual; "
                                 "the file is damaged: fit it again")
        if self.sphere_network_ is not None:
            if self.sphere_network_.n_vertices != n_features:
                raise ModelFileError(f"{check.path}: the sphere front end is for {self.sphere_network_.n_vertices} "
                                     f"vertices but the model for {n_features} features; the file is damaged")
            for key, value in self.sphere_network_.state_dict().items():
                check.finite(f"sphere.{key}", value.numpy())


def _tensors(*arrays) -> list[torch.Tensor]:
    return [torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in arrays]
