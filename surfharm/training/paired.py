"""Training of the paired spherical U-Nets (:mod:`surfharm.harmonize.paired`) on the shared loop :class:`Trainer`.

One residual :class:`spherical_ops.IcoUNet` per scanner maps that scanner's z-scored maps to the
reference scanner's z-scored maps. One step takes a batch of pairs (a scan and a reference-scanner
scan of the same subject): L1 to the reference scan + ``correlation`` x (1 - r); with ``unpaired`` > 0
also a batch of scans without a partner, whose pattern is kept: ``unpaired`` x (1 - r(x, mapped)).
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
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {self.schedule!r}")
        for name in ("batch_size", "epochs", "in_channels", "depth", "base_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps must be a positive int or None, got {self.max_steps!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")

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
