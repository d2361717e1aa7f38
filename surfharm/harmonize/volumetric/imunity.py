"""ImUnity (Cackowski et al., Med Image Anal 2023): a self-supervised VAE-GAN that swaps a slice's contrast.

ImUnity needs no traveling subjects. From one scan it takes two slices at different positions, S1 and
S2, and one random contrast transformation T (:class:`surfharm.models.imunity.ContrastAugment`: per
contrast a random monotone intensity curve, a jittered piecewise-linear gamma curve, and a smooth
multiplicative bias field). The anatomy encoder reads S1, the contrast encoder (a VAE) reads T(S2), and
the decoder must output T(S1): S1's anatomy in S2's transformed contrast. Since T changes at every step
and S2 shows other structures than S1, the contrast code can only carry the contrast, and the anatomy
features must carry the rest.

Networks (:mod:`surfharm.models.imunity`): a U-Net's contracting path for the anatomy (instance
normalisation), a convolutional encoder to the mean and log-variance of a ``code_dim``-dimensional
contrast code, a decoder that gets the code tiled at the bottleneck and as a feature-wise modulation of
every stage, a site classifier on the anatomy bottleneck and a PatchGAN critic
(:class:`surfharm.models.image2d.PatchDiscriminator`) on the outputs.

Losses (one step: ``batch_size`` slices drawn from every training scan's slices that hold at least a
quarter of the scan's largest slice's brain area):

* reconstruction: masked L1 between the decoded slice and T(S1) (inside S1's mask). Our reference notes
  do not say which norm the paper used; L1 is this implementation's choice, as for the other slice methods;
* KL divergence of the contrast code to N(0, I), weight ``kl_weight``;
* adversarial: least-squares GAN, the decoder's outputs against real T(S1) slices, weight
  ``adversarial_weight`` (the critic is trained on the same pairs, Adam betas (0.5, 0.999));
* site confusion: the site classifier learns to tell the scan's site from the anatomy bottleneck
  (cross-entropy), and its gradient reaches the anatomy encoder reversed and scaled by
  ``confusion_weight`` (gradient reversal), so the anatomy features lose what tells the sites apart;
* biological preservation (the paper's optional module; on when ``bio_weight`` > 0): a second head on the
  anatomy bottleneck (:class:`surfharm.models.imunity.CovariateHead`: convolution, average pool, batch
  normalisation, one linear output per covariate) predicts the scan's covariates (``covariates=`` of
  ``fit``: numbers per scan such as age, or sex coded 0/1), each standardised with the training scans'
  mean and standard deviation; its mean squared error is added with weight ``bio_weight`` and reaches
  the anatomy encoder *un*-reversed. The site-confusion module pushes site information out of the
  anatomy features while this one keeps what predicts the covariates in them, so that removing the
  site does not remove the biology that co-varies with it. Our reference notes name the module but
  give neither its loss nor a weight: the regression on standardised covariates with a mean squared
  error, the head's shape and the weight are this implementation's. The head only shapes training:
  harmonization does not use it (it is saved with the model, with the means and standard deviations,
  as ``networks_["bio"]``, so its predictions can be read back in the covariates' units).

  What it measured (simulated two-contrast cohort, 4 mm grid: 24 training scans of 3 scanners, 16
  people; 12 held-out scans of 12 other people; 8-channel networks, 600 steps of 8 slices, covariates
  age and sex, seeds 0-2): a ridge regression from the training scans' pooled bottleneck features to
  age predicts the held-out ages with a mean absolute error of 12.1 years without the module, 12.8 with
  ``bio_weight=1`` and 15.3 with ``bio_weight=10`` (predicting the training mean: 16.0); the head itself
  predicts them with 15.2 to 16.8 years. At 2000 steps (seed 0) the head fits the training scans
  (its loss falls from 1.21 to 0.62) while the held-out error of the ridge regression grows to 18.8
  (13.1 without). With this few people the module learns the training subjects' values rather than
  features that tell age in new people; it is offered for cohorts with many subjects per covariate
  value, not shown to help here.

``augment_anatomy`` (default True) also passes S1 through a second, independent random transformation
before the anatomy encoder. It is not in the description we follow; we add it so the anatomy features
(and the U-Net skips, which would otherwise carry S1's own contrast to the decoder) do not depend on any
one contrast, which matters for scanners not seen in training.

Harmonization: the anatomy from the scan's own slices, the contrast code of the target site: the mean
``mu`` of the contrast codes of up to ``code_slices`` of the target site's training slices, computed
after training for every training site and stored with the model (``networks_["contrast"].site_codes``),
so any training site can be the target (``transform(..., target_site=)``) and scans of sites never seen
in training are harmonized the same way, without fine-tuning (as published).

Several contrasts are handled together: every contrast (with ``context`` neighbours) is an input channel
of both encoders, the decoder outputs every contrast, each contrast gets its own random curve (one bias
field per slice), and one contrast code describes all contrasts of a scan.

Defaults are this implementation's, sized for a CPU (the paper's widths, code size, loss weights and
training length are not in our reference notes): depth 3, 16 channels, 8-d code, KL 1e-3, adversarial
0.05, confusion 0.1, Adam lr 1e-3 (critic: the same), 2000 steps of 8 slices. ``bio_weight`` is 0 (the
biological-preservation module off) by default: it needs per-scan covariates, which many harmonization
runs do not have; the paper presents it as optional; it did not help on our simulated cohort (above);
and with it off ImUnity trains exactly as without the module (covariates given to ``fit`` are then
checked and ignored). Fitting with ``bio_weight`` > 0 and no covariates, or with batches of one slice,
is refused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from surfharm.harmonize.base import HarmonizerInputError, register
from surfharm.harmonize.volumetric import slices as sl
from surfharm.harmonize.volumetric.deep import (DeepImageHarmonizer, SliceData, SliceTrainer, SliceTrainingConfig,
                                                masked_l1)
from surfharm.models.image2d import PatchDiscriminator
from surfharm.models.imunity import (AnatomyEncoder, ContrastAugment, ContrastDecoder, ContrastEncoder,
                                     CovariateHead, SiteClassifier, grad_reverse, kl_divergence)
from surfharm.models.losses import lsgan_loss

#: Slices used for training: at least this fraction of the brain area of the scan's largest slice.
MIN_AREA_FRACTION = 0.25


@dataclass(frozen=True)
class ImUnityTrainingConfig(SliceTrainingConfig):
    """:class:`SliceTrainingConfig` plus ImUnity's loss weights and augmentation (module docstring)."""

    kl_weight: float = 1e-3
    adversarial_weight: float = 0.05
    confusion_weight: float = 0.1
    bio_weight: float = 0.0
    augment: dict = field(default_factory=dict)
    augment_anatomy: bool = True
    code_slices: int = 256


class ImUnityTrainer(SliceTrainer):
    """One step: reconstruction, KL, adversarial, site-confusion (and, when ``networks`` holds ``bio``,
    biological-preservation) losses, then the critic's (module docstring).

    Random draws (slices S1 and S2, the transformations, the VAE noise) are functions of
    (seed, step, rank), so a run resumed from a checkpoint repeats the uninterrupted one. After
    training, :meth:`store_site_codes` writes every site's mean contrast code into the contrast encoder.
    """

    checkpoint_format = "surfharm-imunity-checkpoint"
    loss_names = ("loss", "recon", "kl", "adv", "confusion", "site_acc", "disc")
    progress_desc = "ImUnity"
    progress_keys = ("recon", "site_acc", "disc")

    def __init__(self, config: ImUnityTrainingConfig, networks: nn.ModuleDict, data: SliceData, **run):
        super().__init__(config, networks, data, **run)
        self.augment = ContrastAugment(**config.augment)
        n_contrasts = len(data.centre)
        self.contrast_of_channel = np.repeat(np.arange(n_contrasts), data.images.shape[1] // n_contrasts)
        area = data.masks.flatten(1).sum(1).numpy()
        scans = data.scans.numpy()
        largest = np.zeros(scans.max() + 1)
        np.maximum.at(largest, scans, area)
        self.pool = np.flatnonzero(area >= MIN_AREA_FRACTION * largest[scans])
        # Each pool row's scan's pool rows, for drawing S2 from the same scan at another position.
        self.scan_rows = {int(s): self.pool[scans[self.pool] == s] for s in np.unique(scans[self.pool])}
        self.place = {int(r): i for rows in self.scan_rows.values() for i, r in enumerate(rows)}
        if len(self.pool) < 2:
            raise ValueError("ImUnity needs at least 2 slices with brain in them to train on")
        # The biological-preservation head's targets: every scan's standardised covariates (n_scans, q).
        self.bio_targets = None
        if "bio" in self.networks:
            self.bio_targets = self.standardised_covariates()
            self.loss_names = (*type(self).loss_names, "bio")
            self.progress_keys = (*type(self).progress_keys, "bio")

    def standardised_covariates(self) -> torch.Tensor:
        """(n_scans, n_covariates) float32: the training covariates minus their mean, over their standard
        deviation (over the training scans); the means and deviations go into the head's buffers."""
        values, names = self.data.scan_covariates, self.data.covariate_names
        if values is None:
            raise ValueError("the biological-preservation head needs the scans' covariates (SliceData.scan_covariates)")
        constant = np.flatnonzero(np.ptp(values, axis=0) == 0)
        if constant.size:
            k = int(constant[0])
            raise HarmonizerInputError(f"covariate {names[k]!r} is {values[0, k]:g} for every training scan: it "
                                       "carries nothing to keep; leave it out of covariates")
        mean, sd = values.mean(axis=0), values.std(axis=0)
        head = self.networks["bio"]
        head.mean.copy_(torch.as_tensor(mean, dtype=head.mean.dtype))
        head.scale.copy_(torch.as_tensor(sd, dtype=head.scale.dtype))
        return torch.from_numpy(((values - mean) / sd).astype(np.float32))

    @property
    def epoch_size(self) -> int:
        return len(self.pool)

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        gen = [p for name, net in self.networks.items() if name != "critic" for p in net.parameters()]
        return {"opt_g": torch.optim.Adam(gen, lr=cfg.lr, betas=cfg.betas),
                "opt_d": torch.optim.Adam(self.networks["critic"].parameters(), lr=cfg.lr, betas=cfg.betas)}

    def partners(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each slice row, a row of the same scan at another position (itself if the scan has one)."""
        scans = self.data.scans.numpy()
        out = []
        for r in rows:
            same = self.scan_rows[int(scans[r])]
            shift = int(rng.integers(1, len(same))) if len(same) > 1 else 0
            out.append(same[(self.place[int(r)] + shift) % len(same)])
        return np.asarray(out, dtype=np.int64)

    def train_step(self) -> dict[str, float]:
        cfg, step = self.config, self.step
        lr = self.lr_at(step)
        self._set_lr(lr)
        rng = np.random.default_rng((cfg.seed, 7919, step, self.rank))
        rows1 = self.rows(step, self.pool)
        rows2 = self.partners(rows1, rng)
        x1, m1, s1 = self.batch(rows1)
        x2, m2, _ = self.batch(rows2)
        n_contrasts = len(self.data.centre)
        transform = self.augment.draw(rng, len(rows1), n_contrasts)
        centre = self.data.centre.to(self.device)
        target = transform.apply(x1[:, centre], np.arange(n_contrasts), m1)
        contrast_in = transform.apply(x2, self.contrast_of_channel, m2)
        anatomy_in = (self.augment.draw(rng, len(rows1), n_contrasts).apply(x1, self.contrast_of_channel, m1)
                      if cfg.augment_anatomy else x1)
        eps = torch.from_numpy(rng.standard_normal((len(rows1), self.networks["contrast"].code_dim))
                               .astype(np.float32)).to(self.device)
        mf = m1[:, None].to(x1.dtype)

        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.networks["critic"].requires_grad_(False)
        with self._autocast():
            feats = self.ddp["anatomy"](anatomy_in)
            mu, logvar = self.ddp["contrast"](contrast_in)
            z = mu + (0.5 * logvar).exp() * eps
            out = self.ddp["decoder"](feats, z) * mf
            adv = lsgan_loss(self.networks["critic"](out), True)      # the critic only judges here (no DDP)
            logits = self.ddp["site"](grad_reverse(feats[-1], cfg.confusion_weight))
            # The covariate head sees the bottleneck unreversed: the encoder keeps what predicts them.
            predicted = None if self.bio_targets is None else self.ddp["bio"](feats[-1])
        recon = masked_l1(out, target, m1)
        kl = kl_divergence(mu.float(), logvar.float())
        confusion = F.cross_entropy(logits.float(), s1)
        site_acc = (logits.argmax(1) == s1).float().mean()
        # The classifier minimises the cross-entropy; the anatomy encoder sees its gradient reversed.
        loss = recon + cfg.kl_weight * kl + cfg.adversarial_weight * adv + confusion
        extra = []
        if predicted is not None:
            rows = self.data.scans[torch.as_tensor(rows1, dtype=torch.long)]
            bio = F.mse_loss(predicted.float(), self.bio_targets[rows].to(self.device))
            loss = loss + cfg.bio_weight * bio
            extra.append(bio.detach())
        loss.backward()

        self.networks["critic"].requires_grad_(True)
        with self._autocast():
            disc = 0.5 * (lsgan_loss(self.ddp["critic"](target), True)
                          + lsgan_loss(self.ddp["critic"](out.detach()), False))
        (cfg.adversarial_weight * disc).backward()
        return self._finish_step(torch.stack([loss.detach(), recon.detach(), kl.detach(), adv.detach().float(),
                                              confusion.detach(), site_acc, disc.detach().float(), *extra]), lr)

    def train(self, until_step: int | None = None) -> list[dict[str, float]]:
        history = super().train(until_step)
        self.store_site_codes()
        return history

    @torch.no_grad()
    def store_site_codes(self) -> None:
        """Every training site's mean contrast code over up to ``code_slices`` of its (pool) slices, evenly
        spaced, into ``networks["contrast"].site_codes``."""
        encoder = self.networks["contrast"]
        was_training = encoder.training
        encoder.eval()
        sites = self.data.sites.numpy()
        for k in range(self.data.n_sites):
            rows = self.pool[sites[self.pool] == k]
            if not len(rows):
                continue
            take = rows[np.unique(np.linspace(0, len(rows) - 1, min(len(rows), self.config.code_slices)).astype(int))]
            mus = []
            for start in range(0, len(take), self.config.batch_size):
                x, _, _ = self.batch(take[start:start + self.config.batch_size])
                mus.append(encoder(x)[0].float())
            encoder.site_codes[k] = torch.cat(mus).mean(0)
        encoder.train(was_training)


@register("imunity")
class ImUnity(DeepImageHarmonizer):
    """ImUnity: a self-supervised anatomy/contrast VAE-GAN; harmonizes to any training site, from any site.

    Parameters
    ----------
    contrasts : tuple of str
        The contrasts of every scan (all in, all out), e.g. ``("t1", "t2", "flair")``.
    target_site : site label or None
        The default site ``transform`` maps to (any training site can be chosen there); None: the first
        training site in sorted order.
    depth, base_channels, norm :
        Halvings, first-stage channels and normalisation of the encoders and the decoder.
    code_dim : int
        Size of the contrast code.
    critic_layers, critic_channels : int
        Strided layers and first-stage channels of the PatchGAN critic.
    kl_weight, adversarial_weight, confusion_weight : float
        Weights of the KL term, of the adversarial term, and the gradient-reversal strength of the
        site-confusion module (0: the site classifier is trained but the encoder ignores it).
    bio_weight : float
        Weight of the biological-preservation module's loss (mean squared error of the standardised
        covariates predicted from the anatomy bottleneck; module docstring). 0 (default): the module is
        off, no covariate head is built, and ``covariates`` given to ``fit`` are ignored; > 0 needs
        ``covariates=`` in ``fit``.
    max_gamma, curve_jitter, bias_amplitude : float
        The random contrast transformations (:class:`~surfharm.models.imunity.ContrastAugment`).
    augment_anatomy : bool
        Give the anatomy encoder an independently transformed S1 (module docstring).
    code_slices : int
        Slices per site averaged into its stored contrast code.
    slice_axis, context, percentile, steps, batch_size, lr, seed, device, progress, checkpoint,
    checkpoint_every, resume :
        As :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`'s.

    Learned attributes: those of :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`;
    ``networks_`` holds ``anatomy``, ``contrast`` (with ``site_codes`` (n_sites, code_dim)), ``decoder``,
    ``site`` (the site classifier), ``critic`` and, when ``bio_weight`` > 0, ``bio`` (the covariate head,
    :class:`~surfharm.models.imunity.CovariateHead`, with the covariates' training ``mean`` and ``scale``);
    :attr:`site_codes_` the stored contrast codes; ``covariate_names_`` the covariates' columns.
    """

    model_format = "surfharm-imunity"
    needs_pairs = False
    min_contrasts = 1
    supports_unseen_sites = True
    maps_to_any_site = True
    side_data = ("masks", "subjects", "covariates")

    def __init__(self, *, contrasts: tuple = ("t1",), target_site=None, depth: int = 3, base_channels: int = 16,
                 norm: str = "instance", code_dim: int = 8, critic_layers: int = 3, critic_channels: int = 32,
                 kl_weight: float = 1e-3, adversarial_weight: float = 0.05, confusion_weight: float = 0.1,
                 bio_weight: float = 0.0, max_gamma: float = 2.0, curve_jitter: float = 0.3,
                 bias_amplitude: float = 0.15, augment_anatomy: bool = True, code_slices: int = 256,
                 slice_axis: int = 2, context: int = 0,
                 percentile: float = sl.DEFAULT_PERCENTILE, steps: int = 2000, batch_size: int = 8,
                 lr: float = 1e-3, seed: int = 0, device: str = "cpu", progress: bool = False, checkpoint=None,
                 checkpoint_every: int = 0, resume: bool = False):
        super().__init__(contrasts=contrasts, target_site=target_site, slice_axis=slice_axis, context=context,
                         percentile=percentile, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                         progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
        self.depth = depth
        self.base_channels = base_channels
        self.norm = norm
        self.code_dim = code_dim
        self.critic_layers = critic_layers
        self.critic_channels = critic_channels
        self.kl_weight = kl_weight
        self.adversarial_weight = adversarial_weight
        self.confusion_weight = confusion_weight
        self.bio_weight = bio_weight
        self.max_gamma = max_gamma
        self.curve_jitter = curve_jitter
        self.bias_amplitude = bias_amplitude
        self.augment_anatomy = augment_anatomy
        self.code_slices = code_slices

    @property
    def site_codes_(self) -> np.ndarray:
        """(n_sites, code_dim) float32: each training site's mean contrast code (the harmonization targets)."""
        self.check_is_fitted()
        return self.networks_["contrast"].site_codes.detach().cpu().numpy().copy()

    def _check_params(self) -> None:
        super()._check_params()
        for name in ("depth", "base_channels", "code_dim", "critic_layers", "critic_channels", "code_slices"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise HarmonizerInputError(f"{name} must be a positive int, got {value!r}")
        for name in ("kl_weight", "adversarial_weight", "confusion_weight", "bio_weight", "curve_jitter",
                     "bias_amplitude"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise HarmonizerInputError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.max_gamma, (int, float)) and np.isfinite(self.max_gamma) and self.max_gamma >= 1):
            raise HarmonizerInputError(f"max_gamma must be a finite number >= 1, got {self.max_gamma!r}")

    def fit(self, X, y=None, *, sites=None, masks=None, subjects=None, covariates=None) -> "ImUnity":
        """Train on the scans ``X`` (see :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`);
        ``covariates`` (one row of numbers per scan, e.g. age and sex coded 0/1) are needed when
        ``bio_weight`` > 0 and ignored otherwise. Returns self."""
        self._check_params()
        if self.bio_weight > 0 and covariates is None:
            raise HarmonizerInputError(
                f"ImUnity with bio_weight={self.bio_weight!r} learns to keep covariates in the anatomy features: give "
                "covariates= to fit (one row of numbers per scan, e.g. age and sex coded 0/1; on the command line "
                "--keep age sex), or set bio_weight=0")
        if self.bio_weight > 0 and self.batch_size < 2:
            raise HarmonizerInputError(f"bio_weight > 0 needs batch_size >= 2 (the covariate head normalises over the "
                                       f"batch), got batch_size={self.batch_size!r}")
        return super().fit(X, y, sites=sites, masks=masks, subjects=subjects, covariates=covariates)

    def network_config(self) -> dict[str, Any]:
        config = {"in_channels": self.n_in_channels_, "out_channels": len(self.contrasts_),
                  "n_sites": len(self.sites_), "depth": int(self.depth), "base_channels": int(self.base_channels),
                  "norm": self.norm, "code_dim": int(self.code_dim), "critic_layers": int(self.critic_layers),
                  "critic_channels": int(self.critic_channels)}
        if self.bio_weight > 0:             # only then: models and checkpoints without the module stay as they were
            config["covariates"] = list(self.covariate_names_)
        return config

    def build_networks(self, config: dict[str, Any]) -> nn.ModuleDict:
        c = config
        shape = dict(depth=c["depth"], base_channels=c["base_channels"], norm=c["norm"])
        anatomy = AnatomyEncoder(c["in_channels"], **shape)
        networks = {
            "anatomy": anatomy,
            "contrast": ContrastEncoder(c["in_channels"], c["n_sites"], c["code_dim"], **shape),
            "decoder": ContrastDecoder(c["out_channels"], c["code_dim"], **shape),
            "site": SiteClassifier(anatomy.channels[-1], c["n_sites"]),
            "critic": PatchDiscriminator(c["out_channels"], c["critic_channels"], c["critic_layers"])}
        if c.get("covariates"):             # built last, so the other networks' seeded weights do not change
            networks["bio"] = CovariateHead(anatomy.channels[-1], len(c["covariates"]))
        return nn.ModuleDict(networks)

    def training_config(self, network: dict[str, Any]) -> ImUnityTrainingConfig:
        base = asdict(super().training_config(network))
        augment = asdict(ContrastAugment(max_gamma=float(self.max_gamma), jitter=float(self.curve_jitter),
                                         bias_amplitude=float(self.bias_amplitude)))
        base.update(betas=(0.5, 0.999), kl_weight=float(self.kl_weight),
                    adversarial_weight=float(self.adversarial_weight), confusion_weight=float(self.confusion_weight),
                    bio_weight=float(self.bio_weight), augment=augment, augment_anatomy=bool(self.augment_anatomy),
                    code_slices=int(self.code_slices))
        return ImUnityTrainingConfig(**base)

    def make_trainer(self, config, networks, data, **run) -> ImUnityTrainer:
        return ImUnityTrainer(config, networks, data, **run)

    def map_slices(self, networks, images, masks, source: int, target: int) -> torch.Tensor:
        code = networks["contrast"].site_codes[target].expand(len(images), -1)
        return networks["decoder"](networks["anatomy"](images), code)

    def _check_state(self, check) -> None:
        super()._check_state(check)
        if "bio" in self.networks_:
            check.finite("networks.bio.scale", self.networks_["bio"].scale.detach().cpu().numpy(), positive=True)


__all__ = ["ImUnity", "ImUnityTrainer", "ImUnityTrainingConfig"]
