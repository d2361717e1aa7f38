"""MURD (Liu & Yap, Communications Engineering 2024): multi-site harmonization without traveling subjects.

MURD splits each slice into a site-free *content* code and a site-specific *style* code, StarGAN v2
fashion, and learns from unpaired scans of every site (no traveling subject is needed; ``subjects=``
is accepted and unused). The input is a slice with its neighbours (3 adjacent slices:
``context=1``) of every contrast; the networks (:mod:`surfharm.models.murd`):

* content encoder: 7x7 convolution, two stride-2 convolutions, four residual blocks, Gaussian noise
  added to its output in training (``content_noise``, standard deviation);
* style encoder: a 64-d style code per site (one output head per site);
* mapping network: 16-d noise -> 6 fully connected layers (128) -> a 64-d code per site;
* generator: the content code with the style code *tiled* over it (concatenated to the input of
  each of its residual blocks, in place of StarGAN v2's AdaIN), two upsamplings, every input channel
  out (so generated slices can be encoded again for the cycle);
* discriminator: a PatchGAN with one score map per site.

Losses (published weights, :class:`MURDTrainingConfig`): adversarial 1 (non-saturating, on the target
site's score), R1 gradient penalty on real slices (gamma 1), content reconstruction 10 (content of the
generated slice vs the input's), style reconstruction 10 (style of the generated slice vs the code it
was made with), identity 10 (the slice regenerated with its own style), cycle 10 (back to the source
style), cycle image-gradient 1 (finite differences of the cycled slice vs the input's), content
magnitude 0.01 (mean square of the content code), style diversification 1 (minus the L1 between two
slices made with two codes of the same site; its weight falls linearly to 0 over
``diversity_decay_steps`` steps, as StarGAN v2's does over its whole run). Image losses are L1 inside
the brain mask; generated slices are zeroed outside the input's support (the scans are 0 there); the
content noise is 0.1 by default (our choice: the size is not in our reference notes, and a standard
deviation of 1 swamped the content code and slowed the reconstructions).

Each step, as StarGAN v2's iterations, draws a batch of slices of every site and a random target site
per slice, and runs both style branches on it:

* **latent-guided**: two target styles from two noise vectors through the mapping network;
* **reference-guided**: two target styles of two random slices of the target site through the style
  encoder. As in StarGAN v2 this branch does not train the style encoder (its codes are the targets
  here; the encoder runs with its weights frozen): it trains the content encoder and the generator.

Each branch has its own full generator objective (adversarial, content, style reconstruction against
its style codes, identity, cycle back to the source style, cycle gradient, magnitude, diversity
between its two styles' slices, all with the published weights), and the generator side minimises
their sum; the discriminator minimises the sum of one objective per branch (real slices, that
branch's generated slices, R1). The history holds the mean of each term over the two branches, with
``diversity_latent`` and ``diversity_reference`` apart. Generator side and discriminator are updated in
the same step (the discriminator on the generator's detached slices); a step makes twice the generator
passes of a one-branch step. Three Adam optimizers, betas (0, 0.99): content encoder + style encoder
+ generator (``lr``), mapping network (``mapping_lr``), discriminator (``lr``). The style encoder and
the mapping network start from He initialisation (:mod:`surfharm.models.murd` says why: with PyTorch's
default one their codes hardly varied and the generator ignored the style).
The inference networks are exponential moving averages (EMA) of the content encoder, style encoder,
mapping network and generator (decay ``ema_decay``, with the usual warm-up ``min(decay, (1 + step) / (10
+ step))`` so that short runs do not average in their initial weights).

Harmonizing a scan to a site (``target_site``, any training site: ``transform(..., target_site=)``):
the EMA content encoder reads the scan's slices (no site input), the EMA generator renders them with
the target site's *reference style*: the mean EMA style code (the target site's head) of the target
site's training slices, weighted by their brain area, computed at the end of training and stored
with the model (``networks_["reference"].codes``). No part of this uses the source site, so scans of
sites not seen in training are harmonized too (``supports_unseen_sites``).

Published (full-size) configuration: 256 x 256 slices, ``base_channels=64`` (64, 128, 256),
``style_channels=64``, ``disc_channels=64``, ``lr=1e-4``, ``mapping_lr=1e-6``, ``ema_decay=0.999``,
100 000 iterations, batch 8 (StarGAN v2's), >6000 ABCD T1/T2 volumes. The defaults here are scaled
for a CPU: ``base_channels=8``, ``style_channels=8``, ``disc_channels=8``, 1000 steps of 8 slices,
and a learning rate of 1e-3 (mapping 1e-5, the published ratio of 1/100), since 1e-4 barely moves
the networks within a few hundred steps. Loss weights are the published ones (``loss_weights``
overrides some). Everything else (intensity unit, slicing, output unit, target-site scans returned
unchanged): :mod:`surfharm.harmonize.volumetric.deep`.

Measured (``benchmarks/bench_deep_images.py --quick``: held-out traveling subjects against the target
scanner's scan, SSIM / PSNR dB / MAE; raw scans 0.742 / 10.1 / 270): at 150 steps, both branches with
He-initialised style networks 0.447 / 12.1 / 187 (fit about 60 s on one shared CPU thread); both
branches with PyTorch's default initialisation, whose generator ignores the style, 0.512 / 16.0 / 115;
one branch per step, alternating, default initialisation, 0.537 / 15.9 / 116 (about 30 s). At 500
steps: default initialisation 0.573 / 17.0 / 102, He-initialised style networks 0.500 / 13.4 / 161. At
CPU length a generator that follows the style is further from the target's scans than one that
ignores it, and neither reaches the raw scans' SSIM. The benchmark's default configuration (4 scanners,
500 steps, 2 threads): 0.232 / 6.9 / 370 (raw 0.761 / 8.3 / 341), against 0.486 / 15.2 / 122 with one
branch per step and the default initialisation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
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
from surfharm.models.murd import (ContentEncoder, Generator, MappingNetwork, ReferenceStyles, StyleEncoder, pick)

#: The networks averaged for inference; their EMA copies are ``"<name>_ema"``.
EMA_NETWORKS = ("content", "style", "mapping", "generator")
#: The generator terms of each style branch; the history holds their mean over the two branches.
TERMS = ("adversarial", "content", "style", "identity", "cycle", "gradient", "magnitude", "diversity")
#: Loss weights of the publication (Liu & Yap 2024), the defaults of :class:`MURDTrainingConfig`.
PUBLISHED_WEIGHTS = {"w_adversarial": 1.0, "w_r1": 1.0, "w_content": 10.0, "w_style": 10.0, "w_identity": 10.0,
                     "w_cycle": 10.0, "w_gradient": 1.0, "w_magnitude": 0.01, "w_diversity": 1.0}


@dataclass(frozen=True)
class MURDTrainingConfig(SliceTrainingConfig):
    """:class:`~surfharm.harmonize.volumetric.deep.SliceTrainingConfig` plus MURD's loss weights (published
    values by default), the mapping network's learning rate, the EMA decay, the content noise and the
    latent size."""

    betas: tuple[float, float] = (0.0, 0.99)
    mapping_lr: float = 1e-6
    ema_decay: float = 0.999
    content_noise: float = 0.1
    latent_dim: int = 16
    diversity_decay_steps: int = 1000
    w_adversarial: float = 1.0
    w_r1: float = 1.0
    w_content: float = 10.0
    w_style: float = 10.0
    w_identity: float = 10.0
    w_cycle: float = 10.0
    w_gradient: float = 1.0
    w_magnitude: float = 0.01
    w_diversity: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not (np.isfinite(self.mapping_lr) and self.mapping_lr > 0):
            raise ValueError(f"mapping_lr must be a positive number, got {self.mapping_lr!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        for name in PUBLISHED_WEIGHTS:
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"loss weight {name} must be a finite number >= 0, got {value!r}")


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def _r1(scores: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """R1 penalty: half the mean over samples of the squared gradient norm of the real scores."""
    (grad,) = torch.autograd.grad(scores.sum(), images, create_graph=True)
    return 0.5 * grad.float().pow(2).flatten(1).sum(1).mean()


def _gradient_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 between the finite differences (along H and W) of ``pred`` and ``target`` where both voxels are in
    ``mask``: pred, target (B, C, H, W), mask (B, H, W) bool -> scalar."""
    dh = masked_l1(pred[:, :, 1:] - pred[:, :, :-1], target[:, :, 1:] - target[:, :, :-1], mask[:, 1:] & mask[:, :-1])
    dw = masked_l1(pred[..., 1:] - pred[..., :-1], target[..., 1:] - target[..., :-1], mask[..., 1:] & mask[..., :-1])
    return 0.5 * (dh + dw)


class MURDTrainer(SliceTrainer):
    """Train MURD's networks on the slices of every site (see the module docstring).

    Checkpoints hold every network (the EMA copies and the reference styles included) and the three
    optimizers' states; every random draw (slices, target sites, reference slices, noise vectors,
    content noise) is a function of (seed, step), so a resumed run repeats the uninterrupted one.
    """

    checkpoint_format = "surfharm-murd-checkpoint"
    loss_names = ("G", "D", *TERMS, "r1", "diversity_latent", "diversity_reference")
    progress_desc = "MURD"
    progress_keys = ("G", "D", "cycle")

    def __init__(self, config: MURDTrainingConfig, networks: nn.ModuleDict, data: SliceData, **run):
        super().__init__(config, networks, data, **run)
        self.site_rows = [data.rows_of_site(k) for k in range(data.n_sites)]
        empty = [k for k, rows in enumerate(self.site_rows) if not len(rows)]
        if empty:
            raise ValueError(f"site indices {empty} have no training slice")

    def _wrap_distributed(self, module: nn.Module) -> nn.Module:
        # The EMA copies and the reference styles are not trained: nothing for DistributedDataParallel to do.
        if not any(p.requires_grad for p in module.parameters()):
            return module
        return super()._wrap_distributed(module)

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg, nets = self.config, self.networks
        generator_side = [p for name in ("content", "style", "generator") for p in nets[name].parameters()]
        return {"opt_g": torch.optim.Adam(generator_side, lr=cfg.lr, betas=cfg.betas),
                "opt_mapping": torch.optim.Adam(nets["mapping"].parameters(), lr=cfg.mapping_lr, betas=cfg.betas),
                "opt_d": torch.optim.Adam(nets["discriminator"].parameters(), lr=cfg.lr, betas=cfg.betas)}

    def _set_lr(self, lr: float) -> None:
        # The mapping network keeps its ratio to the schedule's rate (published: 1e-6 against 1e-4).
        ratio = self.config.mapping_lr / self.config.lr
        for name, opt in self.checkpoint_optimizers().items():
            for group in opt.param_groups:
                group["lr"] = lr * ratio if name == "opt_mapping" else lr

    def _draws(self, step: int, sources: torch.Tensor):
        """Target sites, reference rows (two per slice) and a torch generator for the noise of ``step``."""
        rng = np.random.default_rng((self.config.seed, 1, self.rank, step))
        n = len(sources)
        targets = rng.integers(self.data.n_sites, size=n)
        refs = np.array([[rng.choice(self.site_rows[t]) for t in targets] for _ in range(2)])
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        return torch.as_tensor(targets, device=self.device), refs, gen

    def _noise(self, shape, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(self.device)

    def _generator_terms(self, x, mask, support, content, trg, styles, s_src, style_encoder, gen) -> dict:
        """One style branch's generator terms (unweighted scalars): slices made from ``content`` with the
        target styles ``styles`` (two (B, style_dim) codes of the target sites), judged, re-encoded by
        ``style_encoder``, cycled back with the source style ``s_src`` and regenerated with it (identity)."""
        cfg, ddp = self.config, self.ddp
        s_trg, s_trg2 = styles
        with self._autocast():
            noisy = content + cfg.content_noise * self._noise(content.shape, gen)
            fake = ddp["generator"](noisy, s_trg) * support
            fake2 = ddp["generator"](noisy, s_trg2) * support
            content_fake = ddp["content"](fake)
            adversarial = _bce(pick(ddp["discriminator"](fake), trg), True)
            style = (pick(style_encoder(fake), trg) - s_trg).abs().mean()
            cycled = ddp["generator"](content_fake + cfg.content_noise * self._noise(content.shape, gen),
                                      s_src) * support
            same = ddp["generator"](noisy, s_src) * support
        return {"adversarial": adversarial, "content": (content_fake.float() - content.float()).abs().mean(),
                "style": style, "identity": masked_l1(same, x, mask), "cycle": masked_l1(cycled, x, mask),
                "gradient": _gradient_l1(cycled, x, mask), "magnitude": content.float().pow(2).mean(),
                "diversity": masked_l1(fake, fake2.detach(), mask), "fake": fake}

    def _generator_loss(self, terms: dict) -> torch.Tensor:
        cfg = self.config
        w_div = cfg.w_diversity * max(0.0, 1.0 - self.step / max(cfg.diversity_decay_steps, 1))
        return (cfg.w_adversarial * terms["adversarial"] + cfg.w_content * terms["content"]
                + cfg.w_style * terms["style"] + cfg.w_identity * terms["identity"] + cfg.w_cycle * terms["cycle"]
                + cfg.w_gradient * terms["gradient"] + cfg.w_magnitude * terms["magnitude"]
                - w_div * terms["diversity"])

    def train_step(self) -> dict[str, float]:
        cfg, nets, ddp = self.config, self.networks, self.ddp
        lr = self.lr_at(self.step)
        self._set_lr(lr)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        x, mask, src = self.batch(self.rows(self.step, np.arange(len(self.data)), stream=0))
        trg, refs, gen = self._draws(self.step, src)
        support = ((x != 0).any(dim=1) | mask)[:, None].to(x.dtype)       # the input slices' brain, all channels
        n = x.shape[0]

        # -- generator side (the discriminator only judges): both style branches in every step ------------
        nets["discriminator"].requires_grad_(False)
        z = self._noise((2, n, cfg.latent_dim), gen)
        with self._autocast():
            content = ddp["content"](x)
            s_src = pick(ddp["style"](x), src)
            latent_styles = [pick(ddp["mapping"](z[i]), trg) for i in range(2)]
        # Latent-guided: styles from noise through the mapping network; trains every generator-side network.
        latent = self._generator_terms(x, mask, support, content, trg, latent_styles, s_src, ddp["style"], gen)
        # Reference-guided: styles of slices of the target sites. As in StarGAN v2 this branch does not train
        # the style encoder (its codes are targets here), only the content encoder and the generator.
        nets["style"].requires_grad_(False)
        try:
            with torch.no_grad(), self._autocast():
                reference_styles = [pick(nets["style"](self.batch(refs[i])[0]), trg) for i in range(2)]
            reference = self._generator_terms(x, mask, support, content, trg, reference_styles, s_src.detach(),
                                              nets["style"], gen)
        finally:
            nets["style"].requires_grad_(True)
        loss_g = self._generator_loss(latent) + self._generator_loss(reference)
        loss_g.backward()

        # -- discriminator: real slices of their own site, both branches' slices of their target site -------
        nets["discriminator"].requires_grad_(True)
        real = x.detach().requires_grad_(True)
        scores_real = pick(ddp["discriminator"](real), src)
        r1 = _r1(scores_real, real)
        with self._autocast():
            scores_fake = [pick(ddp["discriminator"](branch["fake"].detach()), trg) for branch in (latent, reference)]
        # One discriminator objective per branch (real, its fakes, R1), summed.
        loss_d = 2 * (_bce(scores_real, True) + cfg.w_r1 * r1) + sum(_bce(s, False) for s in scores_fake)
        loss_d.backward()

        mean = {k: 0.5 * (latent[k].detach().float() + reference[k].detach().float()) for k in TERMS}
        values = self._finish_step(torch.stack([loss_g.detach(), loss_d.detach(), *(mean[k] for k in TERMS),
                                                r1.detach(), latent["diversity"].detach().float(),
                                                reference["diversity"].detach().float()]), lr)
        self._update_ema()
        return values

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for name in EMA_NETWORKS:
            for p_ema, p in zip(self.networks[f"{name}_ema"].parameters(), self.networks[name].parameters()):
                p_ema.lerp_(p.detach(), 1.0 - decay)

    def train(self, until_step: int | None = None) -> list[dict[str, float]]:
        """Train (as :meth:`surfharm.training.trainer.Trainer.train`), then set the reference styles."""
        history = super().train(until_step)
        self.set_reference_styles()
        return history

    @torch.no_grad()
    def set_reference_styles(self, batch: int = 64) -> None:
        """Each site's reference style: the mean EMA style code (its head) of its training slices, weighted
        by their brain area, into ``networks["reference"].codes``."""
        encoder = self.networks["style_ema"]
        codes = self.networks["reference"].codes
        for k, rows in enumerate(self.site_rows):
            total = torch.zeros(codes.shape[1], dtype=torch.float64, device=self.device)
            weight = 0.0
            for start in range(0, len(rows), batch):
                x, mask, _ = self.batch(rows[start:start + batch])
                area = mask.flatten(1).sum(1).double()
                total += (encoder(x)[:, k].double() * area[:, None]).sum(0)
                weight += float(area.sum())
            codes[k] = (total / max(weight, 1.0)).to(codes.dtype)


@register("murd")
class MURD(DeepImageHarmonizer):
    """MURD: content/style disentanglement across sites, learned without traveling subjects.

    Parameters
    ----------
    contrasts : tuple of str
        The contrasts of every scan (all in, all out), e.g. ``("t1", "t2")``.
    target_site : site label or None
        The default site scans are mapped to (``transform(..., target_site=)`` picks any training site);
        None: the first site in sorted order.
    base_channels : int
        Channels of the content encoder's first convolution (then 2x and 4x); published 64.
    n_res : int
        Residual blocks of the content encoder and of the generator; published 4.
    style_dim, latent_dim, mapping_dim, mapping_layers : int
        Style code size (64), noise size (16), width (128) and depth (6) of the mapping network.
    style_channels : int
        Channels of the style encoder's first convolution (doubled at each of its 4 halvings).
    disc_channels, disc_layers : int
        Channels of the PatchGAN discriminator's first convolution and its stride-2 layers.
    content_noise : float
        Standard deviation of the Gaussian noise added to the content code in training (normalised unit).
    mapping_lr : float
        Adam learning rate of the mapping network (published 1e-6 with ``lr=1e-4``).
    ema_decay : float
        Decay of the exponential moving average of the inference networks (published 0.999).
    diversity_decay_steps : int
        Steps over which the style-diversification weight falls linearly to 0 (a fixed number, not
        ``steps``, so that a resumed run with more steps repeats the same schedule).
    loss_weights : dict or None
        Overrides of the published loss weights, by name: ``adversarial``, ``r1``, ``content``, ``style``,
        ``identity``, ``cycle``, ``gradient``, ``magnitude``, ``diversity``.
    slice_axis, context, percentile, steps, batch_size, lr, seed, device, progress, checkpoint,
    checkpoint_every, resume :
        As :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`'s; ``context=1``: 3 adjacent
        slices, as published; ``batch_size`` slices (of any site) per step.

    Learned attributes: those of :class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer`;
    ``networks_`` holds ``content``, ``style``, ``mapping``, ``generator``, ``discriminator``, their
    EMA copies ``<name>_ema`` (used by ``transform``) and ``reference`` (the sites' reference styles).
    """

    model_format = "surfharm-murd"
    needs_pairs = False
    min_contrasts = 1
    supports_unseen_sites = True
    maps_to_any_site = True

    def __init__(self, *, contrasts: tuple = ("t1",), target_site=None, base_channels: int = 8, n_res: int = 4,
                 style_dim: int = 64, latent_dim: int = 16, mapping_dim: int = 128, mapping_layers: int = 6,
                 style_channels: int = 8, disc_channels: int = 8, disc_layers: int = 3,
                 content_noise: float = 0.1, mapping_lr: float = 1e-5, ema_decay: float = 0.999,
                 diversity_decay_steps: int = 1000, loss_weights: dict | None = None, slice_axis: int = 2,
                 context: int = 1,
                 percentile: float = sl.DEFAULT_PERCENTILE, steps: int = 1000, batch_size: int = 8,
                 lr: float = 1e-3, seed: int = 0, device: str = "cpu", progress: bool = False, checkpoint=None,
                 checkpoint_every: int = 0, resume: bool = False):
        super().__init__(contrasts=contrasts, target_site=target_site, slice_axis=slice_axis, context=context,
                         percentile=percentile, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                         progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
        self.base_channels = base_channels
        self.n_res = n_res
        self.style_dim = style_dim
        self.latent_dim = latent_dim
        self.mapping_dim = mapping_dim
        self.mapping_layers = mapping_layers
        self.style_channels = style_channels
        self.disc_channels = disc_channels
        self.disc_layers = disc_layers
        self.content_noise = content_noise
        self.mapping_lr = mapping_lr
        self.ema_decay = ema_decay
        self.diversity_decay_steps = diversity_decay_steps
        self.loss_weights = loss_weights

    def pad_depth(self) -> int:
        return 2                                  # the content encoder halves twice

    def network_config(self) -> dict[str, Any]:
        return {"in_channels": self.n_in_channels_, "n_sites": len(self.sites_),
                "centre": sl.centre_channels(len(self.contrasts_), int(self.context)).tolist(),
                "base_channels": int(self.base_channels), "n_res": int(self.n_res), "style_dim": int(self.style_dim),
                "latent_dim": int(self.latent_dim), "mapping_dim": int(self.mapping_dim),
                "mapping_layers": int(self.mapping_layers), "style_channels": int(self.style_channels),
                "disc_channels": int(self.disc_channels), "disc_layers": int(self.disc_layers)}

    def build_networks(self, config: dict[str, Any]) -> nn.ModuleDict:
        c_in, k, s = config["in_channels"], config["n_sites"], config["style_dim"]
        nets = nn.ModuleDict({
            "content": ContentEncoder(c_in, config["base_channels"], config["n_res"]),
            "style": StyleEncoder(c_in, k, s, config["style_channels"]),
            "mapping": MappingNetwork(k, config["latent_dim"], config["mapping_dim"], config["mapping_layers"], s),
            "generator": Generator(c_in, config["base_channels"], s, config["n_res"]),
            "discriminator": PatchDiscriminator(c_in, config["disc_channels"], config["disc_layers"], norm="none",
                                                n_classes=k)})
        for name in EMA_NETWORKS:
            nets[f"{name}_ema"] = copy.deepcopy(nets[name]).requires_grad_(False)
        nets["reference"] = ReferenceStyles(k, s)
        return nets

    def training_config(self, network: dict[str, Any]) -> MURDTrainingConfig:
        weights = dict(PUBLISHED_WEIGHTS)
        overrides = {} if self.loss_weights is None else dict(self.loss_weights)
        unknown = sorted(set(overrides) - {w[2:] for w in PUBLISHED_WEIGHTS})
        if unknown:
            raise HarmonizerInputError(f"loss_weights has unknown name(s) {unknown}; expected some of "
                                       f"{sorted(w[2:] for w in PUBLISHED_WEIGHTS)}")
        weights.update({f"w_{name}": float(value) for name, value in overrides.items()})
        try:
            return MURDTrainingConfig(
                in_channels=self.n_in_channels_, out_channels=self.n_in_channels_, n_sites=len(self.sites_),
                target=self.target_, network=network, lr=float(self.lr), batch_size=int(self.batch_size),
                max_steps=int(self.steps), seed=int(self.seed), mapping_lr=float(self.mapping_lr),
                ema_decay=float(self.ema_decay), content_noise=float(self.content_noise),
                latent_dim=int(self.latent_dim), diversity_decay_steps=int(self.diversity_decay_steps), **weights)
        except ValueError as exc:
            raise HarmonizerInputError(f"MURD parameters: {exc}") from None

    def make_trainer(self, config, networks, data, **run) -> MURDTrainer:
        return MURDTrainer(config, networks, data, **run)

    def map_slices(self, networks, images, masks, source: int, target: int) -> torch.Tensor:
        # The source site is not used: content from the slices, style = the target's reference style.
        content = networks["content_ema"](images)
        style = networks["reference"].codes[target].expand(images.shape[0], -1)
        out = networks["generator_ema"](content, style)
        return out[:, torch.as_tensor(self.network_["centre"], device=out.device)]


__all__ = ["MURD", "MURDTrainer", "MURDTrainingConfig", "PUBLISHED_WEIGHTS"]
