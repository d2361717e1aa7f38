"""Trainers of the learned harmonizers: the shared loop :class:`Trainer` and S2SGAN's :class:`CycleGANTrainer`.

:class:`Trainer` holds what every network harmonizer's training shares: the learning-rate schedule,
batches as functions of (seed, step), the loop with its history and validation, the stop on a
non-finite loss, checkpoints (written and restored by :mod:`surfharm.training.checkpoints`),
DistributedDataParallel, autocast and the progress bar. A subclass names its networks and
optimizers (:meth:`Trainer.checkpoint_modules`, :meth:`Trainer.checkpoint_optimizers`), any further
state to resume (:meth:`Trainer.extra_state_tensors`), its losses and one optimisation step
(:meth:`Trainer.train_step`); CDAE's trainer (:mod:`surfharm.harmonize.cdae`) and the paired
spherical U-Net's (:mod:`surfharm.harmonize.paired`) are such subclasses.

:class:`CycleGANTrainer` trains G_XY: X -> Y, G_YX: Y -> X and discriminators D_X, D_Y on two
domains given as :class:`DomainData` (z-scored maps, cortex masks, conditioning values).

* One step: the generators' loss (least-squares adversarial + cycle L1 + identity L1 +
  correlation), then the discriminators' loss on real maps and maps from the image pools; both
  optimizers (Adam) step only when every loss is finite.
* Batches and pool draws are functions of (seed, step): training is deterministic on CPU, and a
  run resumed from a checkpoint repeats exactly what the uninterrupted run would have done.
* Checkpoints (:meth:`CycleGANTrainer.save_checkpoint`, written and read by
  :mod:`surfharm.training.checkpoints`): one ``.safetensors`` file holding the weights, Adam's
  moments and the image pools, with the JSON metadata (config, step, history and what the caller
  adds: sites, normalisation statistics, level, package version) in its header and in a ``.json``
  copy beside it. Never pickle.
* A non-finite loss stops training with :class:`TrainingDivergedError`; the last checkpoint on
  disk is the last good state. Ctrl-C writes a checkpoint of the last finished step first.
* Several processes: launched by ``torchrun`` (``torch.distributed`` initialised before the trainer
  is built), the generators and discriminators are wrapped in DistributedDataParallel; each
  process takes its share of every global batch of ``batch_size x world_size`` scans; rank 0
  writes checkpoints and shows progress. Free the trainer (``del trainer``, then
  ``gc.collect()``) before ``torch.distributed.destroy_process_group()``: wrappers that outlive their
  process group can abort the process as it exits ("terminate called without an active exception",
  seen now and then with gloo).
* Devices: CPU by default; on CUDA the forward passes run under bfloat16 autocast when ``amp``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spherical_ops import n_vertices
from surfharm.errors import SurfharmError
from surfharm.models import (ImagePool, SphericalDiscriminator, SphericalGenerator, correlation_loss, lsgan_loss,
                             masked_l1)
from surfharm.training import checkpoints
from surfharm.training.config import TrainingConfig
from surfharm.training.data import DomainData


class TrainingDivergedError(SurfharmError, RuntimeError):
    """A loss became NaN or infinite; the message names the step, the losses and the last checkpoint."""


class _Generators(nn.Module):
    """Both generators in one module, so that one DistributedDataParallel forward covers a step."""

    def __init__(self, config: TrainingConfig):
        super().__init__()
        kwargs = dict(cond_channels=config.cond_channels, depth=config.depth, base_channels=config.base_channels,
                      residual=config.residual)
        self.g_xy = SphericalGenerator(config.in_channels, config.level, **kwargs)
        self.g_yx = SphericalGenerator(config.in_channels, config.level, **kwargs)

    def forward(self, x, mx, cx, y, my, cy, identity: bool) -> dict[str, torch.Tensor]:
        # Generated thickness replaces channel 0; the other channels (sulc, curv) are anatomy, kept.
        fake_y = self.g_xy(x, cx) * mx[:, None]
        fake_x = self.g_yx(y, cy) * my[:, None]
        out = {"fake_y": fake_y, "fake_x": fake_x,
               "rec_x": self.g_yx(torch.cat([fake_y, x[:, 1:]], 1), cx),
               "rec_y": self.g_xy(torch.cat([fake_x, y[:, 1:]], 1), cy)}
        if identity:
            out["idt_y"] = self.g_xy(y, cy)
            out["idt_x"] = self.g_yx(x, cx)
        return out


class _Discriminators(nn.Module):
    def __init__(self, config: TrainingConfig):
        super().__init__()
        kwargs = dict(cond_channels=config.cond_channels, n_down=min(config.disc_down, config.level),
                      base_channels=config.disc_channels, global_score=config.disc_global)
        self.d_x = SphericalDiscriminator(1, config.level, **kwargs)
        self.d_y = SphericalDiscriminator(1, config.level, **kwargs)

    def forward(self, real_x, fake_x, cx, cfx, real_y, fake_y, cy, cfy) -> tuple[torch.Tensor, ...]:
        return self.d_x(real_x, cx), self.d_x(fake_x, cfx), self.d_y(real_y, cy), self.d_y(fake_y, cfy)


LOSS_NAMES = ("G", "adv", "cycle", "identity", "corr", "D")


class Trainer:
    """The training loop shared by the network harmonizers (see the module docstring).

    A subclass sets :attr:`checkpoint_format`, :attr:`loss_names`, :attr:`progress_desc` and
    :attr:`progress_keys`; builds its networks and optimizers after calling :meth:`_setup`, then calls
    :meth:`_wrap_distributed`; and implements :attr:`epoch_size`, :meth:`checkpoint_modules`,
    :meth:`checkpoint_optimizers` and :meth:`train_step` (which ends with :meth:`_finish_step`).

    ``config`` is a frozen dataclass with ``to_dict``/``from_dict`` and at least ``lr``, ``betas``,
    ``batch_size``, ``epochs``, ``max_steps``, ``schedule``, ``seed`` and ``amp``; schedule "step"
    also reads ``milestones`` and ``lr_gamma``, schedule "piecewise" ``lr_milestones`` (epochs) and
    ``lr_factors`` (one more factor than milestones).
    """

    checkpoint_format: str = "surfharm-checkpoint"
    loss_names: tuple[str, ...] = ()
    progress_desc: str = "training"
    progress_keys: tuple[str, ...] = ()
    #: DistributedDataParallel's ``find_unused_parameters``: True where a process may leave some networks
    #: unused in a step (e.g. one network per scanner and a batch without that scanner's scans).
    find_unused_parameters: bool = False

    def _setup(self, config, *, device="cpu", checkpoint_path=None, checkpoint_every: int = 0,
               validate: Callable | None = None,
               checkpoint_extra: Callable[[], tuple[dict, dict]] | None = None, progress: bool = False) -> None:
        self.config = config
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.world_size = torch.distributed.get_world_size() if self.distributed else 1
        self.device = _resolve_device(device, self.distributed)
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_every = int(checkpoint_every)
        self.validate, self.checkpoint_extra, self.progress = validate, checkpoint_extra, progress
        self.step = 0
        self.history: list[dict[str, float]] = []

    def _wrap_distributed(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped in DistributedDataParallel when several processes train (else itself)."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        # Buffers are fixed mesh tables (sparse, identical everywhere): nothing to broadcast.
        DDP._set_params_and_buffers_to_ignore_for_model(module, [n for n, _ in module.named_buffers()])
        return DDP(module, device_ids=ids, broadcast_buffers=False,
                   find_unused_parameters=self.find_unused_parameters)

    # -- what a subclass provides -----------------------------------------------------------------------
    @property
    def epoch_size(self) -> int:
        """Scans in one epoch (an epoch is ``ceil(epoch_size / global batch)`` steps)."""
        raise NotImplementedError

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """The networks, by the prefix of their tensors in a checkpoint."""
        raise NotImplementedError

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers, by the prefix of their state in a checkpoint."""
        raise NotImplementedError

    def extra_state_tensors(self) -> dict[str, torch.Tensor]:
        """Further tensors needed to resume exactly (e.g. image pools); none by default."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state_tensors` wrote (``tensors``: the whole checkpoint)."""

    def train_step(self) -> dict[str, float]:
        raise NotImplementedError

    # -- schedule ---------------------------------------------------------------------------------------
    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.epoch_size / self.global_batch))

    @property
    def total_steps(self) -> int:
        return self.config.max_steps or self.config.epochs * self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """Learning rate of the optimizers at ``step``."""
        cfg = self.config
        if cfg.schedule == "cosine":
            return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        if cfg.schedule == "step":
            epoch = step // self.steps_per_epoch
            return cfg.lr * cfg.lr_gamma ** sum(epoch >= m for m in cfg.milestones)
        if cfg.schedule == "piecewise":
            epoch = step // self.steps_per_epoch
            return cfg.lr * cfg.lr_factors[sum(epoch >= m for m in cfg.lr_milestones)]
        return cfg.lr

    def _set_lr(self, lr: float) -> None:
        for opt in self.checkpoint_optimizers().values():
            for group in opt.param_groups:
                group["lr"] = lr

    def batch_rows(self, step: int, n: int, stream: int) -> np.ndarray:
        """This process's rows of stream ``stream`` (of ``n`` scans) at ``step``: each epoch walks a
        fresh permutation (a function of seed, stream and epoch)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng((self.config.seed, stream, epoch)).permutation(n)
        order = np.resize(order, self.steps_per_epoch * self.global_batch)
        start = within * self.global_batch + self.rank * self.config.batch_size
        return order[start:start + self.config.batch_size]

    # -- one step -------------------------------------------------------------------------------------
    def _autocast(self):
        enabled = self.config.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _finish_step(self, losses: torch.Tensor, lr: float) -> dict[str, float]:
        """Average ``losses`` (in :attr:`loss_names` order) over processes, stop on a non-finite one
        (:class:`TrainingDivergedError`, before any optimizer steps), else step every optimizer."""
        losses = losses.detach().float()
        if self.distributed:
            torch.distributed.all_reduce(losses)
            losses /= self.world_size
        values = dict(zip(self.loss_names, losses.tolist()))
        if not all(math.isfinite(v) for v in values.values()):
            where = f"; the last good state is in {self.checkpoint_path}" if self.checkpoint_path else ""
            raise TrainingDivergedError(
                f"training stopped at step {self.step}: non-finite loss "
                + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                + f"{where}. Lower the learning rate (now {lr:.3g}) or check the input maps.")
        for opt in self.checkpoint_optimizers().values():
            opt.step()
        self.step += 1
        return values

    # -- the loop -------------------------------------------------------------------------------------
    def train(self, until_step: int | None = None) -> list[dict[str, float]]:
        """Train up to ``until_step`` (default: :attr:`total_steps`); return the history."""
        end = self.total_steps if until_step is None else min(int(until_step), self.total_steps)
        bar = None
        if self.progress and self.rank == 0:
            from surfharm._progress import progress_bar
            bar = progress_bar(True, total=end, initial=self.step, desc=self.progress_desc, unit="step")
        sums: dict[str, float] = {}
        count = 0
        try:
            while self.step < end:
                values = self.train_step()
                count += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in values.items() if k in self.progress_keys})
                if self.step % self.steps_per_epoch == 0 or self.step == end:
                    record = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                              "lr": self.lr_at(self.step - 1)}
                    record.update({k: v / count for k, v in sums.items()})
                    if self.validate is not None and self.rank == 0:
                        record.update({f"val_{k}": float(v) for k, v in self.validate(self).items()})
                        if bar is not None:
                            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.startswith("val_")})
                    self.history.append(record)
                    sums, count = {}, 0
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            if self.checkpoint_path is not None:
                self.save_checkpoint()
                if self.rank == 0:
                    print(f"interrupted at step {self.step}: checkpoint written to {self.checkpoint_path}; "
                          "resume with the same command and --resume")
            raise
        finally:
            if bar is not None:
                bar.close()
        if self.checkpoint_path is not None:
            self.save_checkpoint()
        return self.history

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor needed to resume: weights, Adam moments, extra state (CPU, contiguous)."""
        return checkpoints.state_tensors(self)

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata of this trainer's checkpoint (config, step, history, optimizer groups)."""
        return checkpoints.checkpoint_metadata(self)

    def save_checkpoint(self, path=None) -> Path | None:
        """Write the checkpoint (rank 0 only; others return None). Default path: ``checkpoint_path``."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: give one here or to the trainer")
        if self.rank != 0:
            return None
        return checkpoints.write_checkpoint(self, path)

    def load_checkpoint(self, path) -> dict[str, Any]:
        """Restore weights, optimizers, extra state, step and history from ``path``; return its metadata.

        Raises ValueError when the checkpoint's configuration differs from this trainer's.
        """
        return checkpoints.restore_checkpoint(self, path)


class CycleGANTrainer(Trainer):
    """Train S2SGAN's networks on two domains; see the module docstring.

    Parameters
    ----------
    config : TrainingConfig
        the run's :class:`TrainingConfig`.
    x, y : DomainData
        the source (X) and target (Y) domains.
    device : str
        "cpu", "cuda", "cuda:1"...; under torchrun each process uses its local GPU.
    checkpoint_path
        the ``.safetensors`` file written every ``checkpoint_every`` steps (0: only at
        the end) and at the end of :meth:`train`; None writes none.
    validate : Callable or None
        optional callable ``(trainer) -> dict[str, float]`` run on rank 0 after each epoch;
        its values join the history and the progress bar.
    checkpoint_extra : Callable[[], tuple[dict, dict]] or None
        ``() -> (tensors, metadata)`` of the caller (e.g. normalisation statistics)
        stored in every checkpoint.
    progress : bool
        show a tqdm progress bar with the losses (rank 0).
    """

    def __init__(self, config: TrainingConfig, x: DomainData, y: DomainData, *, device="cpu",
                 checkpoint_path=None, checkpoint_every: int = 0, validate: Callable | None = None,
                 checkpoint_extra: Callable[[], tuple[dict, dict]] | None = None, progress: bool = False):
        self._setup(config, device=device, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                    validate=validate, checkpoint_extra=checkpoint_extra, progress=progress)
        self.x, self.y = x, y
        for name, domain in (("source", x), ("target", y)):
            expected = (config.in_channels, n_vertices(config.level))
            if tuple(domain.maps.shape[1:]) != expected:
                raise ValueError(f"{name} maps have shape {tuple(domain.maps.shape[1:])} per scan, expected "
                                 f"{expected} (channels, vertices at level {config.level})")
            n_cond = 0 if domain.cond is None else domain.cond.shape[1]
            if n_cond != config.cond_channels:
                raise ValueError(f"{name} has {n_cond} conditioning values per scan, "
                                 f"config says {config.cond_channels}")
        torch.manual_seed(config.seed)
        self.generators = _Generators(config).to(self.device)
        self.discriminators = _Discriminators(config).to(self.device)
        self.opt_g = torch.optim.Adam(self.generators.parameters(), lr=config.lr, betas=config.betas)
        self.opt_d = torch.optim.Adam(self.discriminators.parameters(), lr=config.lr, betas=config.betas)
        self.pool_x = ImagePool(config.pool_size, seed=config.seed)
        self.pool_y = ImagePool(config.pool_size, seed=config.seed + 1)
        self._ddp_g = self._wrap_distributed(self.generators)
        self._ddp_d = self._wrap_distributed(self.discriminators)

    checkpoint_format = checkpoints.CHECKPOINT_FORMAT
    loss_names = LOSS_NAMES
    progress_desc = "S2SGAN"
    progress_keys = ("G", "cycle", "corr", "D")

    @property
    def epoch_size(self) -> int:
        return max(len(self.x), len(self.y))

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"generators": self.generators, "discriminators": self.discriminators}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def extra_state_tensors(self) -> dict[str, torch.Tensor]:
        return {**self.pool_x.state_tensors("pool_x"), **self.pool_y.state_tensors("pool_y")}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.pool_x.load_tensors(tensors, "pool_x", self.device)
        self.pool_y.load_tensors(tensors, "pool_y", self.device)

    # -- one step -------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimisation step of generators and discriminators; returns the losses (averaged over
        processes). Raises :class:`TrainingDivergedError` (without stepping) on a non-finite loss."""
        w, step = self.config.weights, self.step
        lr = self.lr_at(step)
        self._set_lr(lr)
        x, mx, cx = self.x.batch(self.batch_rows(step, len(self.x), 0), self.device)
        y, my, cy = self.y.batch(self.batch_rows(step, len(self.y), 1), self.device)
        mxf, myf = mx.to(x.dtype), my.to(y.dtype)

        # Generators: the discriminators only judge (no gradients for them here).
        self.discriminators.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            out = self._ddp_g(x, mxf, cx, y, myf, cy, identity=w.identity > 0)
            adv = lsgan_loss(self.discriminators.d_y(out["fake_y"], cx), True) + \
                lsgan_loss(self.discriminators.d_x(out["fake_x"], cy), True)
        cycle = masked_l1(out["rec_x"], x[:, :1], mx) + masked_l1(out["rec_y"], y[:, :1], my)
        identity = (masked_l1(out["idt_y"], y[:, :1], my) + masked_l1(out["idt_x"], x[:, :1], mx)
                    if w.identity > 0 else torch.zeros((), device=self.device))
        corr = correlation_loss(x, out["fake_y"], mx) + correlation_loss(y, out["fake_x"], my)
        loss_g = w.adversarial * adv + w.cycle * cycle + w.identity * identity + w.correlation * corr
        loss_g.backward()

        # Discriminators: real maps against generated maps from the pools (with their conditions).
        self.discriminators.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        fake_x, cfx = self._from_pool(self.pool_x, out["fake_x"], cy, step)
        fake_y, cfy = self._from_pool(self.pool_y, out["fake_y"], cx, step)
        with self._autocast():
            s_rx, s_fx, s_ry, s_fy = self._ddp_d(x[:, :1], fake_x, cx, cfx, y[:, :1], fake_y, cy, cfy)
            loss_d = w.discriminator * (lsgan_loss(s_rx, True) + lsgan_loss(s_fx, False)
                                        + lsgan_loss(s_ry, True) + lsgan_loss(s_fy, False))
        loss_d.backward()

        return self._finish_step(torch.stack([loss_g, adv, cycle, identity, corr, loss_d]), lr)

    def _from_pool(self, pool: ImagePool, fake: torch.Tensor, cond, step: int):
        """Pooled fakes and their conditions (stored together, as extra constant channels)."""
        n_cond = self.config.cond_channels
        item = fake.detach() if cond is None else torch.cat(
            [fake.detach(), cond[:, :, None].to(fake.dtype).expand(-1, -1, fake.shape[2])], 1)
        stream = 2 * self.rank + (0 if pool is self.pool_x else 1)
        pooled = pool.query(item, step, stream)
        if n_cond == 0:
            return pooled, None
        return pooled[:, :1], pooled[:, 1:, 0]


def _resolve_device(device, distributed: bool) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for but CUDA is not available here; use device='cpu'")
        if distributed and device.index is None:
            import os
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device
