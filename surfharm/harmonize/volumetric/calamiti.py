"""CALAMITI (Zuo et al., NeuroImage 2021) with the documented improvements of HACA3 (Zuo et al. 2023):
disentangled anatomy and contrast codes learned from same-session multi-contrast slices.

The idea: the contrasts of one session (T1, T2, FLAIR...) show the same anatomy, so an encoder asked
to give one anatomy code from any of them learns a contrast- and scanner-free code (beta), and a
second encoder gives the rest, a low-dimensional contrast code (theta) of the contrast *and* the
scanner. A decoder rebuilds an image from ``[beta, theta]``; harmonizing is decoding a scan's beta with
the target scanner's theta. No traveling subject is needed: every session teaches the model.

Networks (:mod:`surfharm.models.calamiti`, shared by all contrasts and sites)
    * anatomy encoder: a U-Net (``beta_channels``, 8 as published) to ``n_classes`` (5) logits per
      pixel; beta is a one-hot map: a straight-through Gumbel-softmax sample in training (temperature
      ``temperature``), the most probable class at inference (the paper's discrete code);
    * contrast encoder: a small CNN VAE to a ``theta_dim``-d (2 as published) Gaussian code;
    * decoder: a U-Net (``decoder_channels``, 16 as published) on beta and theta tiled over the slice
      (and, by default, the one-hot index of the contrast to draw: see the departures below).

Training (one step, ``batch_size`` slices, 8 as published): for each slice two different contrasts
``a`` and ``b`` of its session are drawn and both are encoded; one of the two anatomy codes is drawn at
random and *both* contrasts are rebuilt from it with their own contrast codes (CALAMITI: beta is
contrast-invariant, so beta(a) must serve for b; and given one beta for both, only theta can say which
contrast to draw). Loss::

    rec_weight (10) x masked L1 of the two reconstructions
    + kl_weight (1e-5) x KL(theta)
    + beta_weight (0.5) x masked L1 between the one-hot (Gumbel) samples of beta(a) and beta(b)
    + cycle_weight (0.05) x [L1(theta(fake), theta_t) + cycle_beta_weight (0.05) x L1(beta(fake), beta)]

where ``fake`` = decode(beta, theta_t) for every encoded slice (its own beta) with ``theta_t`` the code
of another slice of the batch (a random target contrast and scanner); the cycle term starts at
``cycle_start`` (default: the second epoch, as HACA3's "from epoch 2"). Adam, lr 5e-4 as published
(HACA3's cyclic 4e-4..7e-4 schedule is not reproduced: constant rate).

Departures from the published methods, on purpose:

* HACA3's beta term is a patch contrastive loss; here the simpler similarity of CALAMITI, the masked
  L1 between the two contrasts' one-hot beta samples, weighted as HACA3's beta term (0.5). (An L1
  between the softmax maps instead was tried: it drove them to uniform, uninformative probabilities;
  the contrastive term was tried too, see below.)
* HACA3's 0.5 x VGG perceptual loss needs pretrained VGG weights, not available offline: left out.
* HACA3's artifact code eta and its attention fusion are left out. Fusion of the available contrasts
  here is attention-free: beta of a scan = the most probable class of the *mean* of the contrasts'
  class probabilities.
* CALAMITI's fusion of three orientations by a 3-D network is left out: slices along ``slice_axis``
  only. With ``context`` > 0 the encoders see a contrast's neighbour slices; the cycle term re-encodes
  the single decoded slice copied to every neighbour channel (an approximation; exact for context 0).
* The decoder is also told which contrast to draw (``contrast_label``, default True): its input is
  ``[beta, one-hot(contrast), theta]``, so theta only has to carry the scanner's appearance of that
  contrast. The contrast of a scan is known metadata (``contrasts``), and harmonizing always decodes a
  contrast with the target site's code *of that contrast*, so nothing the method promises is lost. Why:
  with theta alone, training stalls (below). ``contrast_label=False`` gives the published decoder.

Why the contrast label. With the published decoder, rebuilding two contrasts of opposite tissue order
(T1, T2) from one shared beta needs theta to say which contrast to draw, and beta to say where the
tissues are; at the start neither does, and each gives the other no gradient: the reconstruction L1
stalls at 0.12 (about what each contrast's mean intensity gives) and beta becomes a content-free pattern.
Measured on the test cohort (3 scanners, 2 T1/T2 sessions per training subject, 4 mm grid, 300 steps,
batch 8, published widths), with a held-out traveling subject's scanner2 scan: reconstruction L1 0.12,
beta's classes explain 1-7 % of the in-mask T1/T2 variance. Tried with the published decoder and not
kept: softmax or noise-free beta, an entropy penalty, theta's log-variance started at -6, the in-mask
intensity quantiles given to theta's head (0.116-0.119 at best); HACA3's patch contrastive beta term
(InfoNCE over 5 x 5 patches of beta's probabilities, temperature 0.1, weight 0.5) in place of the L1
similarity, with negatives from other positions of the same slice or also from the same position of the
batch's other slices: beta agrees across contrasts (95-97 % of voxels) but encodes position and the
brain outline, not tissue (1-3 % of the variance; the reconstruction still stalls, with or without the
contrast label; at weight 0.05 with the label it neither helped nor hurt: 900 steps, reconstruction 0.068,
relative MAE 0.104 / 0.095 to scanner1); rebuilding each contrast from its own beta first: no change.
With the contrast label the stall is gone: reconstruction 0.089 at 300 steps (0.065 at 1200) and the
classes follow the tissue (50 % / 39 % of the T1 / T2 variance at 300 steps).

Where it stands at CPU scale (same cohort and evaluation, defaults, 300 steps, 86 s on 2 threads):
the held-out subject's harmonized scans from scanner2 and from the unseen scanner3 agree closely
(relative MAE between them 0.013 / 0.011 for T1 / T2, against 0.16 / 0.07 raw), but both are farther from
the subject's scanner1 scan than the identity (0.145 / 0.144 against 0.080 / 0.056 from scanner2 and
0.105 / 0.076 from scanner3; 0.095 / 0.091 at 1200 steps). beta stays soft (mean top-class probability
0.42; 0.68 at 1200 steps), the contrasts' classes agree on 86 % of voxels, and the stored site codes hardly
differ between the scanners. The bar is high on this grid: an oracle that knows the scanner-free images,
clusters them into 5 classes and paints each class with the target scan's own median intensity is at
0.060 / 0.059, itself worse than the identity for T2 from scanner2. A discrete 5-class code cannot
rebuild the partial-volume detail of 4 mm voxels; the published setting (0.8 mm, 224 x 224 slices,
20 epochs on a GPU) is where the method is meant to work.

Harmonizing (``transform``): beta from every contrast of the scan (fused as above); theta = the
target site's contrast code, per contrast: the mean of the contrast encoder's means over that site's
training slices (weighted by their brain pixels), computed after training and stored with the model
(``networks_["decoder"].site_theta``); decode. Nothing on the input side is site-specific, so scans of
scanners never seen in training are harmonized the same way (``supports_unseen_sites``), and any
training site can be the target (``transform(..., target_site=...)``, ``maps_to_any_site``). Every
contrast in ``contrasts`` (at least 2) is needed in every scan; a missing one is refused by name.
Intensities: per-scan in-mask 99th percentile in, the target site's unit out
(:mod:`surfharm.harmonize.volumetric.deep`); target-site scans are returned unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from surfharm.harmonize.base import HarmonizerInputError, register
from surfharm.harmonize.volumetric import slices as sl
from surfharm.harmonize.volumetric.deep import (DeepImageHarmonizer, SliceData, SliceTrainer, SliceTrainingConfig,
                                                masked_l1)
from surfharm.models.calamiti import AnatomyEncoder, ContrastEncoder, Decoder, gumbel_one_hot, kl_divergence, one_hot


@dataclass(frozen=True)
class CalamitiTrainingConfig(SliceTrainingConfig):
    """:class:`SliceTrainingConfig` plus CALAMITI's loss weights and code settings (module docstring)."""

    n_contrasts: int = 2
    context: int = 0
    temperature: float = 1.0
    gumbel_noise: float = 1.0
    rec_weight: float = 10.0
    kl_weight: float = 1e-5
    beta_weight: float = 0.5
    cycle_weight: float = 0.05
    cycle_beta_weight: float = 0.05
    cycle_start: int | None = None


def _contrast(x: torch.Tensor, which: torch.Tensor, width: int) -> torch.Tensor:
    """The ``width`` channels of contrast ``which[i]`` of each slice i: (B, C width, H, W) -> (B, width, H, W)."""
    index = (which[:, None] * width + torch.arange(width, device=x.device)[None])[:, :, None, None]
    return torch.gather(x, 1, index.expand(-1, -1, *x.shape[-2:]))


class CalamitiTrainer(SliceTrainer):
    """Train the anatomy encoder, the contrast encoder and the decoder together (module docstring).

    Every random draw of a step (the contrast pairs, the Gumbel and VAE noise, the cycle's targets) is a
    function of (seed, step), so a resumed run repeats the uninterrupted one. When :meth:`train` returns,
    the mean contrast code of each site and contrast is written into the decoder's ``site_theta``.
    """

    checkpoint_format = "surfharm-calamiti-checkpoint"
    loss_names = ("loss", "rec", "kl", "beta", "cycle")
    progress_desc = "CALAMITI"
    progress_keys = ("loss", "rec", "beta")

    def __init__(self, config: CalamitiTrainingConfig, networks: nn.ModuleDict, data: SliceData, **run):
        super().__init__(config, networks, data, **run)
        self.width = 2 * int(config.context) + 1

    @property
    def cycle_start(self) -> int:
        start = self.config.cycle_start
        return self.steps_per_epoch if start is None else int(start)

    def _draws(self, n: int, shape: tuple[int, ...], n_contrasts: int):
        rng = np.random.default_rng((int(self.config.seed), 101, self.step))
        a = rng.integers(0, n_contrasts, n)
        b = (a + rng.integers(1, n_contrasts, n)) % n_contrasts          # a different contrast of the session
        pick = torch.from_numpy(rng.random(n) < 0.5).to(self.device)     # whose beta both are rebuilt from
        tensor = lambda v: torch.from_numpy(np.asarray(v, np.float32)).to(self.device)  # noqa: E731
        return (torch.from_numpy(a).to(self.device), torch.from_numpy(b).to(self.device), pick,
                tensor(rng.random((2, n, *shape))),
                tensor(rng.standard_normal((2, n, int(self.config.network["theta_dim"])))),
                torch.from_numpy(rng.permutation(2 * n)).to(self.device))

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        lr = self.lr_at(self.step)
        self._set_lr(lr)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        rows = self.rows(self.step, np.arange(len(self.data)))
        x, mask, _ = self.batch(rows)
        n, k = len(rows), int(cfg.context)
        a, b, pick, uniform, eps, perm = self._draws(n, (int(cfg.network["n_classes"]), *x.shape[-2:]),
                                               int(cfg.n_contrasts))
        beta_enc, theta_enc, decoder = self.ddp["beta"], self.ddp["theta"], self.ddp["decoder"]
        with self._autocast():
            xs = torch.cat([_contrast(x, a, self.width), _contrast(x, b, self.width)])       # (2n, width, H, W)
            m2 = torch.cat([mask, mask])
            logits = beta_enc(xs).float()
            beta = gumbel_one_hot(logits, uniform.flatten(0, 1), cfg.temperature, cfg.gumbel_noise)
            mu, logvar = theta_enc(xs, m2)
            mu, logvar = mu.float(), logvar.float()
            theta = mu + (0.5 * logvar).exp() * eps.flatten(0, 1)
            # Both contrasts rebuilt from ONE anatomy code, drawn at random from the two (CALAMITI): given the
            # same beta, only theta can tell the decoder which contrast to draw (with each rebuilt from the other's
            # beta, "draw the contrast not shown" would need no theta at all).
            shared = torch.where(pick[:, None, None, None], beta[:n], beta[n:])
            which = torch.cat([a, b])                         # the contrast each row shows (and must be drawn as)
            rec = decoder(torch.cat([shared, shared]), theta, which).float()
            rec_loss = masked_l1(rec, xs[:, k:k + 1], m2)
            kl = kl_divergence(mu, logvar)
            probs = torch.softmax(logits, dim=1)
            # On the one-hot samples, not the probabilities: an L1 between softmax maps is smallest for uniform
            # (uninformative) ones, while two noisy samples agree only where both encoders are confident.
            beta_loss = masked_l1(beta[:n], beta[n:], mask)
            loss = cfg.rec_weight * rec_loss + cfg.kl_weight * kl + cfg.beta_weight * beta_loss
            cycle = torch.zeros((), device=self.device)
            if cfg.cycle_weight > 0 and self.step >= self.cycle_start:
                target = theta.detach()[perm]                 # another slice's code: a random contrast and site
                fake = decoder(beta, target, which[perm]).float() * m2[:, None]
                fake_in = fake.expand(-1, self.width, -1, -1)
                mu_fake, _ = theta_enc(fake_in, m2)
                probs_fake = torch.softmax(beta_enc(fake_in).float(), dim=1)
                cycle = (mu_fake.float() - target).abs().mean() + cfg.cycle_beta_weight * masked_l1(
                    probs_fake, probs.detach(), m2)
                loss = loss + cfg.cycle_weight * cycle
        loss.backward()
        return self._finish_step(torch.stack([loss, rec_loss, kl, beta_loss, cycle]), lr)

    def train(self, until_step: int | None = None) -> list[dict[str, float]]:
        history = super().train(until_step)
        self.networks["decoder"].site_theta.copy_(self.site_codes())
        return history

    @torch.no_grad()
    def site_codes(self, chunk: int = 64) -> torch.Tensor:
        """``(n_sites, n_contrasts, theta_dim)``: each site's mean contrast code per contrast (the encoder's
        means, weighted by every training slice's brain pixels)."""
        encoder, d = self.networks["theta"], self.data
        was_training = encoder.training
        encoder.eval()
        n_c = int(self.config.n_contrasts)
        sums = torch.zeros(d.n_sites, n_c, encoder.theta_dim, dtype=torch.float64)
        weights = torch.zeros(d.n_sites, dtype=torch.float64)
        for start in range(0, len(d), chunk):
            x, mask, sites = self.batch(np.arange(start, min(start + chunk, len(d))))
            w = mask.flatten(1).sum(1).double().cpu()
            for c in range(n_c):
                mu, _ = encoder(x[:, c * self.width:(c + 1) * self.width], mask)
                sums[:, c].index_add_(0, sites.cpu(), mu.double().cpu() * w[:, None])
            weights.index_add_(0, sites.cpu(), w)
        encoder.train(was_training)
        return (sums / weights.clamp_min(1)[:, None, None]).float().to(self.networks["decoder"].site_theta.device)


@register("calamiti")
class Calamiti(DeepImageHarmonizer):
    """CALAMITI / HACA3: anatomy (beta) and contrast (theta) codes from same-session multi-contrast slices.

    Parameters
    ----------
    contrasts : tuple of str
        The contrasts of every scan (at least 2; all needed in every scan), e.g. ``("t1", "t2", "flair")``.
    target_site : site label or None
        Default site to map to (any training site can be chosen in ``transform``); None: the first in
        sorted order.
    n_classes : int
        Classes of the one-hot anatomy code (5 as published).
    theta_dim : int
        Size of the contrast code (2 as published).
    depth : int
        Halvings of the two U-Nets (slices are zero-padded to multiples of ``2 ** depth``).
    beta_channels, decoder_channels, theta_channels : int
        First-stage channels of the anatomy U-Net (8 as published), the decoder U-Net (16 as published)
        and the contrast encoder.
    contrast_label : bool
        Give the decoder the index of the contrast to draw beside theta (default True, a departure from
        the papers, where theta alone says it; module docstring). False: the published decoder.
    temperature : float
        Gumbel-softmax temperature of beta in training.
    gumbel_noise : float
        Scale of the Gumbel noise of beta in training (1: Gumbel-softmax samples; 0: the noise-free
        straight-through one-hot of the most probable class).
    rec_weight, kl_weight, beta_weight, cycle_weight, cycle_beta_weight : float
        Loss weights (module docstring; 10, 1e-5, 0.5, 0.05, 0.05).
    cycle_start : int or None
        Step at which the cycle term starts; None: the start of the second epoch.
    slice_axis, context, percentile, steps, batch_size, lr, seed, device, progress, checkpoint,
    checkpoint_every, resume :
        As :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`'s (lr 5e-4 and batch 8 as
        published; ``steps`` 2000 by default, a CPU-sized run: HACA3 trains 20 epochs of 224 x 224 slices).

    Learned attributes: those of :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`;
    ``networks_`` holds ``"beta"``, ``"theta"`` and ``"decoder"`` (whose buffer ``site_theta``
    ``(n_sites, n_contrasts, theta_dim)`` is the mean contrast code of each site and contrast).
    """

    model_format = "surfharm-calamiti"
    needs_pairs = False
    min_contrasts = 2
    supports_unseen_sites = True
    maps_to_any_site = True

    def __init__(self, *, contrasts: tuple = ("t1", "t2"), target_site=None, n_classes: int = 5,
                 theta_dim: int = 2, depth: int = 3, beta_channels: int = 8, decoder_channels: int = 16,
                 theta_channels: int = 8, contrast_label: bool = True, temperature: float = 1.0,
                 gumbel_noise: float = 1.0, rec_weight: float = 10.0,
                 kl_weight: float = 1e-5, beta_weight: float = 0.5, cycle_weight: float = 0.05,
                 cycle_beta_weight: float = 0.05, cycle_start: int | None = None, slice_axis: int = 2,
                 context: int = 0, percentile: float = sl.DEFAULT_PERCENTILE, steps: int = 2000, batch_size: int = 8,
                 lr: float = 5e-4, seed: int = 0, device: str = "cpu", progress: bool = False, checkpoint=None,
                 checkpoint_every: int = 0, resume: bool = False):
        super().__init__(contrasts=contrasts, target_site=target_site, slice_axis=slice_axis, context=context,
                         percentile=percentile, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                         progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
        self.n_classes = n_classes
        self.theta_dim = theta_dim
        self.depth = depth
        self.beta_channels = beta_channels
        self.decoder_channels = decoder_channels
        self.theta_channels = theta_channels
        self.contrast_label = contrast_label
        self.temperature = temperature
        self.gumbel_noise = gumbel_noise
        self.rec_weight = rec_weight
        self.kl_weight = kl_weight
        self.beta_weight = beta_weight
        self.cycle_weight = cycle_weight
        self.cycle_beta_weight = cycle_beta_weight
        self.cycle_start = cycle_start

    def _check_params(self) -> None:
        super()._check_params()
        for name in ("n_classes", "theta_dim", "depth", "beta_channels", "decoder_channels", "theta_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise HarmonizerInputError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.contrast_label, (bool, np.bool_)):
            raise HarmonizerInputError(f"contrast_label must be True or False, got {self.contrast_label!r}")
        if int(self.n_classes) < 2:
            raise HarmonizerInputError(f"n_classes must be at least 2, got {self.n_classes!r}")
        for name in ("temperature", "gumbel_noise", "rec_weight", "kl_weight", "beta_weight", "cycle_weight",
                     "cycle_beta_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise HarmonizerInputError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.temperature <= 0:
            raise HarmonizerInputError(f"temperature must be > 0, got {self.temperature!r}")
        if self.cycle_start is not None and (isinstance(self.cycle_start, bool) or not isinstance(
                self.cycle_start, (int, np.integer)) or self.cycle_start < 0):
            raise HarmonizerInputError(f"cycle_start must be an int >= 0 or None, got {self.cycle_start!r}")

    def network_config(self) -> dict[str, Any]:
        return {"in_channels": 2 * int(self.context) + 1, "n_contrasts": len(self.contrasts_),
                "n_sites": len(self.sites_), "n_classes": int(self.n_classes), "theta_dim": int(self.theta_dim),
                "depth": int(self.depth), "beta_channels": int(self.beta_channels),
                "decoder_channels": int(self.decoder_channels), "theta_channels": int(self.theta_channels),
                "contrast_label": bool(self.contrast_label)}

    def build_networks(self, config: dict[str, Any]) -> nn.ModuleDict:
        return nn.ModuleDict({
            "beta": AnatomyEncoder(config["in_channels"], config["n_classes"], config["depth"],
                                   config["beta_channels"]),
            "theta": ContrastEncoder(config["in_channels"], config["theta_dim"], config["theta_channels"]),
            # Model files written before the contrast label existed have no key: their decoders have none.
            "decoder": Decoder(config["n_classes"], config["theta_dim"], config["n_sites"], config["n_contrasts"],
                               config["depth"], config["decoder_channels"],
                               bool(config.get("contrast_label", False)))})

    def training_config(self, network: dict[str, Any]) -> CalamitiTrainingConfig:
        return CalamitiTrainingConfig(
            in_channels=self.n_in_channels_, out_channels=len(self.contrasts_), n_sites=len(self.sites_),
            target=self.target_, network=network, lr=float(self.lr), batch_size=int(self.batch_size),
            max_steps=int(self.steps), seed=int(self.seed), n_contrasts=len(self.contrasts_),
            context=int(self.context), temperature=float(self.temperature),
            gumbel_noise=float(self.gumbel_noise), rec_weight=float(self.rec_weight),
            kl_weight=float(self.kl_weight), beta_weight=float(self.beta_weight),
            cycle_weight=float(self.cycle_weight), cycle_beta_weight=float(self.cycle_beta_weight),
            cycle_start=None if self.cycle_start is None else int(self.cycle_start))

    def make_trainer(self, config, networks, data, **run) -> CalamitiTrainer:
        return CalamitiTrainer(config, networks, data, **run)

    # -- the codes -------------------------------------------------------------------------------------------
    def anatomy(self, networks: nn.ModuleDict, images: torch.Tensor) -> torch.Tensor:
        """Fused one-hot beta of a batch of slices ``(B, C_in, H, W)``: the most probable class of the mean of
        the contrasts' class probabilities, ``(B, n_classes, H, W)``."""
        width = 2 * int(self.context) + 1
        probs = torch.stack([torch.softmax(networks["beta"](images[:, c * width:(c + 1) * width]).float(), dim=1)
                             for c in range(len(self.contrasts_))]).mean(dim=0)
        return one_hot(probs)

    def map_slices(self, networks, images, masks, source: int, target: int) -> torch.Tensor:
        beta = self.anatomy(networks, images)
        codes = networks["decoder"].site_theta[target]                     # (n_contrasts, theta_dim)
        index = torch.zeros(len(images), dtype=torch.long, device=images.device)
        return torch.cat([networks["decoder"](beta, codes[c].expand(len(images), -1), index + c).float()
                          for c in range(len(self.contrasts_))], dim=1)

    @property
    def site_theta_(self) -> np.ndarray:
        """``(n_sites, n_contrasts, theta_dim)`` mean contrast code of each training site and contrast."""
        self.check_is_fitted()
        return self.networks_["decoder"].site_theta.detach().cpu().numpy().copy()


__all__ = ["Calamiti", "CalamitiTrainer", "CalamitiTrainingConfig"]
