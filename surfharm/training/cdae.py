"""Training of CDAE's networks (:mod:`surfharm.models.cdae`) on the shared loop :class:`Trainer`.

One step on a batch of scans of any sites (per-site z-scored maps, cortex masks, site indices):

1. *Networks* (invariant encoder, scanner encoder, decoder; the adversary judges only):
   reconstruction with the scan's own code (L1 + 3 MSE) x 1, scanner-encoder BCE on the real map
   (class-frequency weighted) x 0.9, invariant features' BCE toward 0.5 on the adversary x 0.4; for
   every scan whose site is not its target (the reference site with ``train_targets="reference"``, the
   authors'; a random other site with ``"all"``), the map decoded with the target's code: its scanner
   BCE toward the target x 0.7, re-encoding consistency of the invariant features (L1 + 10 MSE) x 4,
   1 - r(x, mapped) x 10, the cycle back to the source code (L1 + 3 MSE) x 0.5 and 1 - r(x^2, mapped^2)
   x 3.
2. *Adversary* (site classifier on the detached invariant features): BCE toward the scan's site x 0.5.

Learning rate: Adam(5e-4, betas 0.5, 0.999) times 1, 0.5, 0.2, 0.1, 0.05 from epochs 0, 5, 10, 20, 30
(schedule "piecewise"). Batches and target draws are functions of (seed, step), so a resumed run repeats
the uninterrupted one exactly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from spherical_ops import n_vertices
from surfharm.models.cdae import (CDAENetwork, CDAEWeights, SiteClassifier, masked_l1_per_scan, masked_mse_per_scan,
                                  pearson_per_scan, weighted_bce)
from surfharm.training.config import check_run_settings
from surfharm.training.trainer import Trainer

CDAE_CHECKPOINT_FORMAT = "surfharm-cdae-checkpoint"
CDAE_LOSS_NAMES = ("G", "rec", "scanner", "enc_adv", "fake_scanner", "latent", "corr", "cycle", "dcorr", "adv")
TRAIN_TARGETS = ("reference", "all")


@dataclass(frozen=True)
class CDAEConfig:
    """Everything that defines a CDAE training run (written into every checkpoint)."""

    level: int
    n_sites: int
    in_channels: int = 1
    base_channels: int = 32
    reference: int = 0
    train_targets: str = "reference"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 1
    epochs: int = 50
    max_steps: int | None = None
    schedule: str = "piecewise"
    lr_milestones: tuple[int, ...] = (5, 10, 20, 30)
    lr_factors: tuple[float, ...] = (1.0, 0.5, 0.2, 0.1, 0.05)
    milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.5
    weights: CDAEWeights = field(default_factory=CDAEWeights)
    seed: int = 0
    amp: bool = True

    def __post_init__(self):
        check_run_settings(self, ("piecewise", "cosine", "step", "constant"),
                           ("batch_size", "epochs", "in_channels", "base_channels"))
        if len(self.lr_factors) != len(self.lr_milestones) + 1:
            raise ValueError("lr_factors needs one more value than lr_milestones")
        if self.train_targets not in TRAIN_TARGETS:
            raise ValueError(f"train_targets must be one of {TRAIN_TARGETS}, got {self.train_targets!r}")
        if self.n_sites < 2:
            raise ValueError(f"CDAE needs at least 2 sites, got {self.n_sites}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("betas", "lr_milestones", "lr_factors", "milestones"):
            out[name] = list(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CDAEConfig":
        values = dict(values)
        values["weights"] = CDAEWeights(**values.get("weights", {}))
        for name in ("betas", "lr_milestones", "lr_factors", "milestones"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


class CDAETrainer(Trainer):
    """Train CDAE's networks; see the module docstring.

    Parameters
    ----------
    config : CDAEConfig
        the run's :class:`CDAEConfig`.
    maps : Tensor
        (n, C, V) float32 z-scored per site, 0 outside ``mask``.
    mask : Tensor
        (n, V) bool.
    sites : Tensor
        (n,) int site indices in ``[0, n_sites)``.
    device, checkpoint_path, checkpoint_every, validate, checkpoint_extra, progress
        Other arguments as :class:`surfharm.training.CycleGANTrainer`'s.
    """

    checkpoint_format = CDAE_CHECKPOINT_FORMAT
    loss_names = CDAE_LOSS_NAMES
    progress_desc = "CDAE"
    progress_keys = ("G", "rec", "corr", "adv")

    def __init__(self, config: CDAEConfig, maps: torch.Tensor, mask: torch.Tensor, sites: torch.Tensor, *,
                 device="cpu", checkpoint_path=None, checkpoint_every: int = 0, validate: Callable | None = None,
                 checkpoint_extra: Callable[[], tuple[dict, dict]] | None = None, progress: bool = False):
        self._setup(config, device=device, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                    validate=validate, checkpoint_extra=checkpoint_extra, progress=progress)
        expected = (config.in_channels, n_vertices(config.level))
        if maps.dim() != 3 or tuple(maps.shape[1:]) != expected or mask.shape != (maps.shape[0], expected[1]):
            raise ValueError(f"maps must be (n, {expected[0]}, {expected[1]}) and mask (n, {expected[1]}); got "
                             f"{tuple(maps.shape)} and {tuple(mask.shape)}")
        self.maps, self.mask, self.sites = maps, mask, sites.long()
        counts = torch.bincount(self.sites, minlength=config.n_sites).float()
        if (counts == 0).any():
            raise ValueError(f"every site needs training scans; counts {counts.tolist()}")
        # Class-frequency weights of the scanner BCE: n / (K n_k), 1 on average over scans.
        self.class_weight = (len(self.sites) / (config.n_sites * counts)).to(self.device)
        torch.manual_seed(config.seed)
        self.network = CDAENetwork(config.in_channels, config.level, config.n_sites,
                                   config.base_channels).to(self.device)
        self.classifier = SiteClassifier(self.network.invariant.out_channels,
                                         self.network.invariant.bottleneck_level, config.n_sites,
                                         config.base_channels).to(self.device)
        self.opt_g = torch.optim.Adam(self.network.parameters(), lr=config.lr, betas=config.betas)
        self.opt_c = torch.optim.Adam(self.classifier.parameters(), lr=config.lr, betas=config.betas)
        self._ddp_network = self._wrap_distributed(self.network)
        self._ddp_classifier = self._wrap_distributed(self.classifier)

    @property
    def epoch_size(self) -> int:
        return len(self.sites)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"network": self.network, "classifier": self.classifier}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_c": self.opt_c}

    def targets(self, step: int, sources: torch.Tensor) -> torch.Tensor:
        """The target site of each scan of the batch at ``step`` (a function of seed and step)."""
        cfg = self.config
        if cfg.train_targets == "reference":
            return torch.full_like(sources, cfg.reference)
        # One draw for the global batch, this process's share of it: several processes draw what one
        # process with the global batch would.
        rng = np.random.default_rng((cfg.seed, 101, step, 0))
        shifts = rng.integers(1, cfg.n_sites, size=self.global_batch)
        start = self.rank * cfg.batch_size
        shift = torch.as_tensor(shifts[start:start + len(sources)], device=sources.device)
        return (sources + shift) % cfg.n_sites                   # any site but the scan's own

    def train_step(self) -> dict[str, float]:
        """One step of the networks and the adversary; returns the losses (see the module docstring)."""
        w, step = self.config.weights, self.step
        lr = self.lr_at(step)
        self._set_lr(lr)
        rows = torch.as_tensor(self.batch_rows(step, len(self.sites), 0), dtype=torch.long)
        x, mask = self.maps[rows].to(self.device), self.mask[rows].to(self.device)
        src = self.sites[rows].to(self.device)
        tgt = self.targets(step, src)
        moved = (tgt != src).float()                             # scans that are mapped to another code
        n_moved = moved.sum()
        if self.distributed:
            # Means over the moved scans of the global batch: DDP averages the processes' gradients, so
            # each process divides its sum by the global count / world size.
            n_moved = n_moved.detach().clone()
            torch.distributed.all_reduce(n_moved)
            n_moved = n_moved / self.world_size
        n_moved = n_moved.clamp_min(1 / self.world_size)
        keep = mask[:, None].to(x.dtype)
        net = self.network

        self.classifier.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            out = self._ddp_network(x, tgt, src, keep)
            adv_scores = self.classifier(out["features"])
        features, rec, mapped, cyc = out["features"], out["rec"], out["mapped"], out["cycle"]
        sc_real, sc_fake, features_mapped = out["scanner_real"], out["scanner_fake"], out["features_mapped"]
        rec_loss = (masked_l1_per_scan(rec, x, mask) + w.reconstruction_mse * masked_mse_per_scan(rec, x, mask)).mean()
        scanner = weighted_bce(sc_real, net.code(src), self.class_weight[src]).mean()
        enc_adv = weighted_bce(adv_scores, torch.full_like(adv_scores, 0.5, dtype=torch.float32)).mean()

        def over_moved(per_scan: torch.Tensor) -> torch.Tensor:
            return (per_scan * moved).sum() / n_moved

        fake_scanner = over_moved(weighted_bce(sc_fake, net.code(tgt)))
        diff = features_mapped.float() - features.float()
        latent = over_moved(diff.abs().flatten(1).mean(1) + w.latent_mse * diff.square().flatten(1).mean(1))
        corr = over_moved(1 - pearson_per_scan(x, mapped, mask))
        cycle = over_moved(masked_l1_per_scan(cyc, x, mask) + w.reconstruction_mse * masked_mse_per_scan(cyc, x, mask))
        dcorr = over_moved(1 - pearson_per_scan(x.float().square(), mapped.float().square(), mask))
        loss_g = (w.reconstruction * rec_loss + w.scanner * scanner + w.encoder_adversarial * enc_adv
                  + w.fake_scanner * fake_scanner + w.latent * latent + w.correlation * corr + w.cycle * cycle
                  + w.distance_correlation * dcorr)
        loss_g.backward()

        self.classifier.requires_grad_(True)
        self.opt_c.zero_grad(set_to_none=True)
        with self._autocast():
            scores = self._ddp_classifier(features.detach())
        adv = w.adversary * weighted_bce(scores, net.code(src)).mean()
        adv.backward()
        losses = torch.stack([loss_g, rec_loss, scanner, enc_adv, fake_scanner, latent, corr, cycle, dcorr, adv])
        return self._finish_step(losses, lr)
