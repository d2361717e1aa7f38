"""Training of the paired spherical U-Nets (:mod:`surfharm.harmonize.paired`) on the shared loop :class:`Trainer`.

One residual :class:`spherical_ops.IcoUNet` per scanner maps that scanner's z-scored maps to the
reference scanner's z-scored maps. One step takes a batch of pairs (a scan and a reference-scanner
scan of the same subject): L1 to the reference scan + ``correlation`` x (1 - r); with ``unpaired`` > 0
also a batch of scans without a partner, whose pattern is kept: ``unpaired`` x (1 - r(x, mapped)).

:class:`MispelTrainer` trains MISPEL's per-scanner encoders and decoders
(:mod:`surfharm.harmonize.mispel_sphere`) in its two steps on the same loop; it shares the traveling
subjects, the z-scored maps and the checkpoints with the paired U-Nets.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from spherical_ops import n_vertices
from spherical_ops.nn import IcoUNet
from surfharm.models.cdae import masked_l1_per_scan, pearson_per_scan
from surfharm.training.config import check_run_settings
from surfharm.training.trainer import Trainer

PAIRED_CHECKPOINT_FORMAT = "surfharm-paired-unet-checkpoint"
PAIRED_LOSS_NAMES = ("loss", "l1", "corr", "unpaired")


@dataclass(frozen=True)
class PairedConfig:
    """Everything that defines a paired training run (written into every checkpoint)."""

    level: int
    n_sites: int
    reference: int = 0
    in_channels: int = 1
    depth: int = 4
    base_channels: int = 16
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 4
    epochs: int = 50
    max_steps: int | None = None
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.5
    correlation: float = 1.0
    unpaired: float = 0.0
    seed: int = 0
    amp: bool = True

    def __post_init__(self):
        check_run_settings(self, ("cosine", "step", "constant"),
                           ("batch_size", "epochs", "in_channels", "depth", "base_channels"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"], out["milestones"] = list(self.betas), list(self.milestones)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PairedConfig":
        values = dict(values)
        values["betas"] = tuple(values.get("betas", (0.9, 0.999)))
        values["milestones"] = tuple(values.get("milestones", ()))
        return cls(**values)


class PairedNetworks(nn.Module):
    """One residual spherical U-Net per scanner other than the reference (keys: site indices as text).

    Shapes: x (B, C, V), sites (B,) indices -> (B, C, V): ``x + unet_site(x)``; the U-Nets' output layers
    start at zero, so an untrained network is the identity (per-vertex mean/std matching in the
    z-scored space).
    """

    def __init__(self, config: PairedConfig):
        super().__init__()
        self.nets = nn.ModuleDict()
        for k in range(config.n_sites):
            if k == config.reference:
                continue
            unet = IcoUNet(config.in_channels, config.in_channels, config.level,
                           depth=min(config.depth, config.level + 1), base_channels=config.base_channels, norm="group")
            nn.init.zeros_(unet.head.weight)
            nn.init.zeros_(unet.head.bias)
            self.nets[str(k)] = unet

    def forward(self, x: torch.Tensor, sites: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        for k in torch.unique(sites).tolist():
            if str(k) not in self.nets:
                continue                                        # the reference scanner: unchanged
            rows = torch.nonzero(sites == k).flatten()
            out[rows] = x[rows] + self.nets[str(k)](x[rows])
        return out


class PairedTrainer(Trainer):
    """Train :class:`PairedNetworks` on pairs of scans; see the module docstring.

    Parameters
    ----------
    config : PairedConfig
        the run's :class:`PairedConfig`.
    maps : Tensor
        (n, C, V) float32 z-scored per site, 0 outside ``mask``.
    mask : Tensor
        (n, V) bool.
    sites : Tensor
        (n,) int site indices.
    pairs : ndarray
        (n_pairs, 2) int rows (a scan, its reference-scanner scan).
    unpaired : ndarray or None
        int rows of scans without a partner (used when ``config.unpaired`` > 0).
    """

    # A process whose batch holds no scan of a scanner computes no gradient for that scanner's network: DDP must
    # reduce zeros for it instead of waiting. A network no process used keeps no gradient, so Adam skips it, as
    # on one process (a zero-weighted term, as MISPEL's networks add, would give a zero gradient on which Adam
    # still steps, changing one-process runs).
    find_unused_parameters = True
    checkpoint_format = PAIRED_CHECKPOINT_FORMAT
    loss_names = PAIRED_LOSS_NAMES
    progress_desc = "paired U-Net"
    progress_keys = ("loss", "l1", "corr")

    def __init__(self, config: PairedConfig, maps: torch.Tensor, mask: torch.Tensor, sites: torch.Tensor,
                 pairs: np.ndarray, unpaired: np.ndarray | None = None, *, device="cpu", checkpoint_path=None,
                 checkpoint_every: int = 0, validate: Callable | None = None,
                 checkpoint_extra: Callable[[], tuple[dict, dict]] | None = None, progress: bool = False):
        self._setup(config, device=device, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                    validate=validate, checkpoint_extra=checkpoint_extra, progress=progress)
        expected = (config.in_channels, n_vertices(config.level))
        if maps.dim() != 3 or tuple(maps.shape[1:]) != expected:
            raise ValueError(f"maps must be (n, {expected[0]}, {expected[1]}), got {tuple(maps.shape)}")
        if len(pairs) == 0:
            raise ValueError("no pairs to train on")
        self.maps, self.mask, self.sites = maps, mask, sites.long()
        self.pairs = np.asarray(pairs, dtype=np.int64)
        self.unpaired = np.zeros(0, np.int64) if unpaired is None else np.asarray(unpaired, dtype=np.int64)
        torch.manual_seed(config.seed)
        self.networks = PairedNetworks(config).to(self.device)
        self.opt = torch.optim.Adam(self.networks.parameters(), lr=config.lr, betas=config.betas)
        self._ddp = self._wrap_distributed(self.networks)

    @property
    def epoch_size(self) -> int:
        return len(self.pairs)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"networks": self.networks}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def _batch(self, rows):
        index = torch.as_tensor(rows, dtype=torch.long)
        return (self.maps[index].to(self.device), self.mask[index].to(self.device),
                self.sites[index].to(self.device))

    def train_step(self) -> dict[str, float]:
        cfg, step = self.config, self.step
        lr = self.lr_at(step)
        self._set_lr(lr)
        chosen = self.pairs[self.batch_rows(step, len(self.pairs), 0)]
        x, mx, sx = self._batch(chosen[:, 0])
        y, my, _ = self._batch(chosen[:, 1])
        both = mx & my
        use_unpaired = cfg.unpaired > 0 and len(self.unpaired) > 0
        if use_unpaired:
            u, mu, su = self._batch(self.unpaired[self.batch_rows(step, len(self.unpaired), 1)])
            x_all, s_all = torch.cat([x, u]), torch.cat([sx, su])
        else:
            x_all, s_all = x, sx
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            out = self._ddp(x_all, s_all)
        keep = both[:, None].to(out.dtype)
        mapped = out[:len(x)] * keep
        l1 = masked_l1_per_scan(mapped, y, both).mean()
        corr = (1 - pearson_per_scan(mapped, y, both)).mean()
        unpaired = torch.zeros((), device=self.device)
        if use_unpaired:
            unpaired = (1 - pearson_per_scan(u, out[len(x):] * mu[:, None].to(out.dtype), mu)).mean()
        loss = l1 + cfg.correlation * corr + cfg.unpaired * unpaired
        loss.backward()
        return self._finish_step(torch.stack([loss, l1, corr, unpaired]), lr)


# -- MISPEL's two-step scheme (:mod:`surfharm.harmonize.mispel_sphere`) --------------------------------------

MISPEL_CHECKPOINT_FORMAT = "surfharm-mispel-sphere-checkpoint"
MISPEL_LOSS_NAMES = ("loss", "variance", "rec", "pairwise", "stage")


@dataclass(frozen=True)
class MispelConfig:
    """Everything that defines a MISPEL training run (written into every checkpoint).

    ``epochs`` and ``max_steps`` apply to each of the two steps (published: 100 epochs each); the
    loss weights are the published ones (step 1: ``variance`` x latent variance + ``reconstruction_1`` x
    L1; step 2: ``reconstruction_2`` x L1 + ``harmonization`` x mean pairwise L1 between the subject's
    scans, each decoded by its own scanner's decoder). ``reference`` is the harmonizer's reference
    scanner, kept with the run; the training itself does not depend on it.
    """

    level: int
    n_sites: int
    reference: int = 0
    in_channels: int = 1
    latent_channels: int = 6
    base_channels: int = 32
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 4
    epochs: int = 20
    max_steps: int | None = None
    schedule: str = "constant"
    variance: float = 1.0
    reconstruction_1: float = 0.3
    reconstruction_2: float = 1.0
    harmonization: float = 4.0
    seed: int = 0
    amp: bool = True

    def __post_init__(self):
        check_run_settings(self, ("constant", "cosine"),
                           ("batch_size", "epochs", "in_channels", "latent_channels", "base_channels"))
        if self.n_sites < 2:
            raise ValueError(f"MISPEL needs at least 2 scanners, got {self.n_sites}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MispelConfig":
        values = dict(values)
        values["betas"] = tuple(values.get("betas", (0.9, 0.999)))
        return cls(**values)


class MispelTrainer(Trainer):
    """Train :class:`surfharm.models.mispel_sphere.MispelNetworks` in MISPEL's two steps.

    Steps ``[0, phase_steps)`` are step 1 (encoders and decoders); steps ``[phase_steps, 2 phase_steps)``
    step 2 (decoders only; the encoders run without gradients). Encoders and decoders have an Adam each;
    the decoders' Adam starts afresh at step 2 (a new optimisation, as published). A batch is
    ``batch_size`` traveling subjects, each with its scans on every scanner that saw it; every loss is a
    mean per subject, then over the batch's subjects (so several processes average to the global batch).

    Parameters
    ----------
    config : MispelConfig
    maps : Tensor
        (n, C, V) float32 z-scored per site, 0 outside ``mask``.
    mask : Tensor
        (n, V) bool.
    groups : ndarray
        (n_groups, n_sites) int: row of the scan of each traveling subject on each scanner, -1 where
        it has none (at least 2 per row).
    device, checkpoint_path, checkpoint_every, validate, checkpoint_extra, progress
        As :class:`PairedTrainer`'s.
    """

    checkpoint_format = MISPEL_CHECKPOINT_FORMAT
    loss_names = MISPEL_LOSS_NAMES
    progress_desc = "MISPEL"
    progress_keys = ("loss", "variance", "rec", "pairwise")

    def __init__(self, config: MispelConfig, maps: torch.Tensor, mask: torch.Tensor, groups: np.ndarray, *,
                 device="cpu", checkpoint_path=None, checkpoint_every: int = 0, validate: Callable | None = None,
                 checkpoint_extra: Callable[[], tuple[dict, dict]] | None = None, progress: bool = False):
        from surfharm.models.mispel_sphere import MispelNetworks

        self._setup(config, device=device, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                    validate=validate, checkpoint_extra=checkpoint_extra, progress=progress)
        expected = (config.in_channels, n_vertices(config.level))
        if maps.dim() != 3 or tuple(maps.shape[1:]) != expected or tuple(mask.shape) != (maps.shape[0], expected[1]):
            raise ValueError(f"maps must be (n, {expected[0]}, {expected[1]}) and mask (n, {expected[1]}); got "
                             f"{tuple(maps.shape)} and {tuple(mask.shape)}")
        groups = np.asarray(groups, dtype=np.int64)
        if groups.ndim != 2 or groups.shape[1] != config.n_sites or len(groups) == 0 \
                or ((groups >= 0).sum(axis=1) < 2).any():
            raise ValueError(f"groups must be (n_groups >= 1, {config.n_sites}) rows with >= 2 scans each, got "
                             f"shape {groups.shape}")
        self.maps, self.mask, self.groups = maps, mask, groups
        torch.manual_seed(config.seed)
        self.networks = MispelNetworks(config.n_sites, config.in_channels, config.level, config.latent_channels,
                                       config.base_channels).to(self.device)
        self.opt_enc = torch.optim.Adam(self.networks.encoders.parameters(), lr=config.lr, betas=config.betas)
        self.opt_dec = torch.optim.Adam(self.networks.decoders.parameters(), lr=config.lr, betas=config.betas)
        self._ddp = self._wrap_distributed(self.networks)
        self._ddp_decoders = None                                # built when step 2 begins

    @property
    def epoch_size(self) -> int:
        return len(self.groups)

    @property
    def phase_steps(self) -> int:
        """Steps of each of the two training steps."""
        return self.config.max_steps or self.config.epochs * self.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return 2 * self.phase_steps

    def stage_at(self, step: int) -> int:
        """1 (encoders and decoders) or 2 (decoders only) at ``step``."""
        return 1 if step < self.phase_steps else 2

    def lr_at(self, step: int) -> float:
        if self.config.schedule == "cosine":
            within = step % self.phase_steps if step < self.total_steps else self.phase_steps
            return self.config.lr * 0.5 * (1 + math.cos(math.pi * within / self.phase_steps))
        return self.config.lr

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"networks": self.networks}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_enc": self.opt_enc, "opt_dec": self.opt_dec}

    # -- losses ---------------------------------------------------------------------------------------
    def losses(self, groups: np.ndarray, stage: int, plain: bool = False) -> dict[str, torch.Tensor]:
        """Losses (scalars) of the traveling subjects ``groups`` (rows of :attr:`groups`) at ``stage``.

        ``loss`` is the stage's objective; the other terms are computed either way. ``plain``: run the
        networks themselves, not their DistributedDataParallel wrappers (for evaluation on one process).
        """
        cfg = self.config
        rows = torch.as_tensor(np.asarray(groups, dtype=np.int64))
        g, k = torch.nonzero(rows >= 0, as_tuple=True)
        scans = rows[g, k]
        x, mask = self.maps[scans].to(self.device), self.mask[scans].to(self.device)
        g, k = g.to(self.device), k.to(self.device)
        n_groups = rows.shape[0]
        if stage == 1:
            with self._autocast():
                latent, rec = (self.networks if plain else self._ddp)(x, k)
        else:
            with torch.no_grad(), self._autocast():
                latent = self.networks.encoders(x, k)
            if self._ddp_decoders is None and not plain:
                self._ddp_decoders = self._wrap_distributed(self.networks.decoders)
            with self._autocast():
                rec = (self.networks.decoders if plain else self._ddp_decoders)(latent, k)
        latent, rec = latent.float(), rec.float()
        size = torch.zeros(n_groups, device=self.device).index_add(0, g, torch.ones_like(g, dtype=torch.float32))
        # Vertices inside cortex in every scan of the subject.
        inside = torch.zeros(n_groups, mask.shape[1], device=self.device).index_add(0, g, mask.float())
        inside = (inside == size[:, None]).float()

        def per_group(values: torch.Tensor, index: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
            return torch.zeros(n_groups, device=self.device).index_add(0, index, values) / count.clamp_min(1)

        def masked_mean(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:   # (n, C, V), (n, V) -> (n,)
            return (values * where[:, None]).sum(dim=(1, 2)) / (where.sum(1) * values.shape[1]).clamp_min(1)

        centre = torch.zeros(n_groups, *latent.shape[1:], device=self.device).index_add(0, g, latent)
        centre = centre / size[:, None, None]
        spread = torch.zeros_like(centre).index_add(0, g, (latent - centre[g]).square()) / size[:, None, None]
        variance = masked_mean(spread, inside)
        rec_l1 = per_group(masked_l1_per_scan(rec, x, mask), g, size)
        first, second = torch.triu_indices(len(g), len(g), offset=1, device=self.device)
        same = g[first] == g[second]
        first, second = first[same], second[same]
        pair_group = g[first]
        pair_count = torch.zeros(n_groups, device=self.device).index_add(
            0, pair_group, torch.ones_like(pair_group, dtype=torch.float32))
        # Each scan decoded by its own scanner's decoder (as published): step 2 makes the units' outputs agree.
        pairwise = per_group(masked_mean((rec[first] - rec[second]).abs(), inside[pair_group]),
                             pair_group, pair_count)
        variance, rec_l1, pairwise = variance.mean(), rec_l1.mean(), pairwise.mean()
        if stage == 1:
            loss = cfg.variance * variance + cfg.reconstruction_1 * rec_l1
        else:
            loss = cfg.reconstruction_2 * rec_l1 + cfg.harmonization * pairwise
        return {"loss": loss, "variance": variance, "rec": rec_l1, "pairwise": pairwise}

    def evaluate(self) -> dict[str, float]:
        """Both steps' objectives on every traveling subject (no gradients): ``loss_1``, ``loss_2`` and
        the terms."""
        with torch.no_grad():
            one = self.losses(self.groups, 1, plain=True)
            two = self.losses(self.groups, 2, plain=True)
        return {"loss_1": float(one["loss"]), "loss_2": float(two["loss"]),
                **{k: float(v) for k, v in one.items() if k != "loss"}}

    def train_step(self) -> dict[str, float]:
        step = self.step
        stage = self.stage_at(step)
        if step == self.phase_steps:
            self.opt_dec.state.clear()                           # step 2 is a new optimisation of the decoders
        lr = self.lr_at(step)
        self._set_lr(lr)
        chosen = self.groups[self.batch_rows(step, len(self.groups), 0)]
        self.opt_enc.zero_grad(set_to_none=True)
        self.opt_dec.zero_grad(set_to_none=True)
        out = self.losses(chosen, stage)
        out["loss"].backward()
        stage_value = torch.tensor(float(stage), device=self.device)
        values = torch.stack([out["loss"], out["variance"], out["rec"], out["pairwise"], stage_value])
        return self._finish_step(values.detach(), lr)
