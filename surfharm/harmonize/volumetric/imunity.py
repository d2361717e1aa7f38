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
* the paper's optional biological-preservation module (a head predicting a covariate such as age from the
  anatomy features) is not implemented: the slice training data of
  :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer` carry no per-scan covariates.

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
0.05, confusion 0.1, Adam lr 1e-3 (critic: the same), 2000 steps of 8 slices.
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
                                     SiteClassifier, grad_reverse, kl_divergence)
from surfharm.models.losses import lsgan_loss

#: Slices used for training: at least this fraction of the brain area of the scan's largest slice.
MIN_AREA_FRACTION = 0.25


@dataclass(frozen=True)
class ImUnityTrainingConfig(SliceTrainingConfig):
    """:class:`SliceTrainingConfig` plus ImUnity's loss weights and augmentation (module docstring)."""

    kl_weight: float = 1e-3
    adversarial_weight: float = 0.05
    confusion_weight: float = 0.1
    augment: dict = field(default_factory=dict)
    augment_anatomy: bool = True
    code_slices: int = 256


class ImUnityTrainer(SliceTrainer):
    """One step: reconstruction, KL, adversarial and site-confusion losses, then the critic's (module docstring).

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
        recon = masked_l1(out, target, m1)
        kl = kl_divergence(mu.float(), logvar.float())
        confusion = F.cross_entropy(logits.float(), s1)
        site_acc = (logits.argmax(1) == s1).float().mean()
        # The classifier minimises the cross-entropy; the anatomy encoder sees its gradient reversed.
        loss = recon + cfg.kl_weight * kl + cfg.adversarial_weight * adv + confusion
        loss.backward()

        self.networks["critic"].requires_grad_(True)
        with self._autocast():
            disc = 0.5 * (lsgan_loss(self.ddp["critic"](target), True)
                          + lsgan_loss(self.ddp["critic"](out.detach()), False))
        (cfg.adversarial_weight * disc).backward()
        return self._finish_step(torch.stack([loss.detach(), recon.detach(), kl.detach(), adv.detach().float(),
                                              confusion.detach(), site_acc, disc.detach().float()]), lr)

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
    ``site`` (the site classifier) and ``critic``; :attr:`site_codes_` the stored contrast codes.
    """

    model_format = "surfharm-imunity"
    needs_pairs = False
    min_contrasts = 1
    supports_unseen_sites = True
    maps_to_any_site = True

    def __init__(self, *, contrasts: tuple = ("t1",), target_site=None, depth: int = 3, base_channels: int = 16,
                 norm: str = "instance", code_dim: int = 8, critic_layers: int = 3, critic_channels: int = 32,
                 kl_weight: float = 1e-3, adversarial_weight: float = 0.05, confusion_weight: float = 0.1,
                 max_gamma: float = 2.0, curve_jitter: float = 0.3, bias_amplitude: float = 0.15,
                 augment_anatomy: bool = True, code_slices: int = 256, slice_axis: int = 2, context: int = 0,
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
        for name in ("kl_weight", "adversarial_weight", "confusion_weight", "curve_jitter", "bias_amplitude"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise HarmonizerInputError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.max_gamma, (int, float)) and np.isfinite(self.max_gamma) and self.max_gamma >= 1):
            raise HarmonizerInputError(f"max_gamma must be a finite number >= 1, got {self.max_gamma!r}")

    def network_config(self) -> dict[str, Any]:
        return {"in_channels": self.n_in_channels_, "out_channels": len(self.contrasts_), "n_sites": len(self.sites_),
                "depth": int(self.depth), "base_channels": int(self.base_channels), "norm": self.norm,
                "code_dim": int(self.code_dim), "critic_layers": int(self.critic_layers),
                "critic_channels": int(self.critic_channels)}

    def build_networks(self, config: dict[str, Any]) -> nn.ModuleDict:
        c = config
        shape = dict(depth=c["depth"], base_channels=c["base_channels"], norm=c["norm"])
        anatomy = AnatomyEncoder(c["in_channels"], **shape)
        return nn.ModuleDict({
            "anatomy": anatomy,
            "contrast": ContrastEncoder(c["in_channels"], c["n_sites"], c["code_dim"], **shape),
            "decoder": ContrastDecoder(c["out_channels"], c["code_dim"], **shape),
            "site": SiteClassifier(anatomy.channels[-1], c["n_sites"]),
            "critic": PatchDiscriminator(c["out_channels"], c["critic_channels"], c["critic_layers"])})

    def training_config(self, network: dict[str, Any]) -> ImUnityTrainingConfig:
        base = asdict(super().training_config(network))
        augment = asdict(ContrastAugment(max_gamma=float(self.max_gamma), jitter=float(self.curve_jitter),
                                         bias_amplitude=float(self.bias_amplitude)))
        base.update(betas=(0.5, 0.999), kl_weight=float(self.kl_weight),
                    adversarial_weight=float(self.adversarial_weight), confusion_weight=float(self.confusion_weight),
                    augment=augment, augment_anatomy=bool(self.augment_anatomy), code_slices=int(self.code_slices))
        return ImUnityTrainingConfig(**base)

    def make_trainer(self, config, networks, data, **run) -> ImUnityTrainer:
        return ImUnityTrainer(config, networks, data, **run)

    def map_slices(self, networks, images, masks, source: int, target: int) -> torch.Tensor:
        code = networks["contrast"].site_codes[target].expand(len(images), -1)
        return networks["decoder"](networks["anatomy"](images), code)


__all__ = ["ImUnity", "ImUnityTrainer", "ImUnityTrainingConfig"]
