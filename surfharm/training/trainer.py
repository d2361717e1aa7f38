"""Training of S2SGAN's cycle-consistent pair of spherical generators (importable; CLI ``surfharm s2sgan train``).

:class:`CycleGANTrainer` trains G_XY: X -> Y, G_YX: Y -> X and discriminators D_X, D_Y on two
domains given as :class:`DomainData` (z-scored maps, cortex masks, conditioning values).

* One step: the generators' loss (least-squares adversarial + cycle L1 + identity L1 +
  correlation), then the discriminators' loss on real maps and maps from the image pools; both
  optimizers (Adam) step only when every loss is finite.
* Batches and pool draws are functions of (seed, step): training is deterministic on CPU, and a
  run resumed from a checkpoint repeats exactly what the uninterrupted run would have done.
* Checkpoints (:meth:`CycleGANTrainer.save_checkpoint`): one ``.safetensors`` file holding the
  weights, Adam's moments and the image pools, with the JSON metadata (config, step, history and
  what the caller adds: sites, normalisation statistics, level, package version) in its header and
  in a ``.json`` copy beside it. Never pickle.
* A non-finite loss stops training with :class:`TrainingDivergedError`; the last checkpoint on
  disk is the last good state. Ctrl-C writes a checkpoint of the last finished step first.
* Several processes: launched by ``torchrun`` (``torch.distributed`` initialised before the trainer
  is built), the generators and discriminators are wrapped in DistributedDataParallel; each
  process takes its share of every global batch of ``batch_size x world_size`` scans; rank 0
  writes checkpoints and shows progress.
* Devices: CPU by default; on CUDA the forward passes run under bfloat16 autocast when ``amp``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from surfharm._atomic import atomic_path, write_text_atomic
from surfharm.harmonize.base import json_default
from surfharm.models import (ImagePool, LossWeights, SphericalDiscriminator, SphericalGenerator,
                             correlation_loss, lsgan_loss, masked_l1)

CHECKPOINT_FORMAT = "surfharm-s2sgan-checkpoint"
CHECKPOINT_VERSION = 1
_METADATA_KEY = "surfharm"


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the message names the step, the losses and the last checkpoint."""


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that defines a training run (written into every checkpoint).

    Networks: ``level`` (icosahedral level of the maps), ``in_channels`` (map channels, thickness
    first), ``cond_channels`` (constant conditioning channels, e.g. age), generator ``depth`` /
    ``base_channels`` / ``residual``, discriminator ``disc_channels`` / ``disc_down`` /
    ``disc_global``.

    Optimisation: Adam(``lr``, ``betas``) for both networks; ``batch_size`` scans of each domain
    per process and step; ``epochs`` of ``max(n_X, n_Y) / global batch`` steps, or ``max_steps``.
    ``schedule``: "step" (the authors': lr x ``lr_gamma`` at each epoch of ``milestones``),
    "cosine" (to 0 over the run; the default, which suits short runs on small cohorts) or
    "constant". ``pool_size`` maps in each image pool (the authors' 20). ``weights``: loss weights.
    ``seed`` fixes initialisation, batches and pool draws. ``amp``: bfloat16 autocast on CUDA.
    """

    level: int
    in_channels: int = 1
    cond_channels: int = 0
    depth: int = 4
    base_channels: int = 16
    residual: bool = False
    disc_channels: int = 16
    disc_down: int = 3
    disc_global: bool = False
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 1
    epochs: int = 50
    max_steps: int | None = None
    schedule: str = "cosine"
    milestones: tuple[int, ...] = (5, 10, 30, 100, 180)
    lr_gamma: float = 0.5
    pool_size: int = 20
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    amp: bool = True

    def __post_init__(self):
        if self.schedule not in ("step", "cosine", "constant"):
            raise ValueError(f"schedule must be 'step', 'cosine' or 'constant', got {self.schedule!r}")
        for name in ("batch_size", "epochs", "in_channels", "depth", "base_channels", "disc_channels"):
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
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        values = dict(values)
        values["weights"] = LossWeights(**values.get("weights", {}))
        values["betas"] = tuple(values.get("betas", (0.5, 0.999)))
        values["milestones"] = tuple(values.get("milestones", ()))
        return cls(**values)


@dataclass
class DomainData:
    """The training scans of one domain (site), already normalised.

    Attributes:
        maps: (n, in_channels, V) float32, z-scored per vertex, 0 outside the mask.
        mask: (n, V) bool, vertices inside cortex (the only ones in the losses).
        cond: (n, cond_channels) float32 conditioning values (standardised), or None.
    """

    maps: torch.Tensor
    mask: torch.Tensor
    cond: torch.Tensor | None = None

    def __post_init__(self):
        if self.maps.dim() != 3 or self.mask.shape != (self.maps.shape[0], self.maps.shape[2]):
            raise ValueError(f"DomainData: maps must be (n, C, V) and mask (n, V); got {tuple(self.maps.shape)} "
                             f"and {tuple(self.mask.shape)}")
        if self.maps.shape[0] < 1:
            raise ValueError("DomainData: a domain needs at least one scan")

    def __len__(self) -> int:
        return self.maps.shape[0]

    def batch(self, rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        index = torch.as_tensor(rows, dtype=torch.long)
        cond = None if self.cond is None else self.cond[index].to(device)
        return self.maps[index].to(device), self.mask[index].to(device), cond


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


class CycleGANTrainer:
    """Train S2SGAN's networks on two domains; see the module docstring.

    Args:
        config: the run's :class:`TrainingConfig`.
        x, y: the source (X) and target (Y) domains.
        device: "cpu", "cuda", "cuda:1"...; under torchrun each process uses its local GPU.
        checkpoint_path: the ``.safetensors`` file written every ``checkpoint_every`` steps (0: only at
            the end) and at the end of :meth:`train`; None writes none.
        validate: optional callable ``(trainer) -> dict[str, float]`` run on rank 0 after each epoch;
            its values join the history and the progress bar.
        checkpoint_extra: ``() -> (tensors, metadata)`` of the caller (e.g. normalisation statistics)
            stored in every checkpoint.
        progress: show a tqdm progress bar with the losses (rank 0).
    """

    def __init__(self, config: TrainingConfig, x: DomainData, y: DomainData, *, device="cpu",
                 checkpoint_path=None, checkpoint_every: int = 0, validate: Callable | None = None,
                 checkpoint_extra: Callable[[], tuple[dict, dict]] | None = None, progress: bool = False):
        self.config = config
        self.x, self.y = x, y
        for name, domain in (("source", x), ("target", y)):
            expected = (config.in_channels, 10 * 4 ** config.level + 2)
            if tuple(domain.maps.shape[1:]) != expected:
                raise ValueError(f"{name} maps have shape {tuple(domain.maps.shape[1:])} per scan, expected "
                                 f"{expected} (channels, vertices at level {config.level})")
            n_cond = 0 if domain.cond is None else domain.cond.shape[1]
            if n_cond != config.cond_channels:
                raise ValueError(f"{name} has {n_cond} conditioning values per scan, "
                                 f"config says {config.cond_channels}")
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.world_size = torch.distributed.get_world_size() if self.distributed else 1
        self.device = _resolve_device(device, self.distributed)
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_every = int(checkpoint_every)
        self.validate, self.checkpoint_extra, self.progress = validate, checkpoint_extra, progress

        torch.manual_seed(config.seed)
        self.generators = _Generators(config).to(self.device)
        self.discriminators = _Discriminators(config).to(self.device)
        self.opt_g = torch.optim.Adam(self.generators.parameters(), lr=config.lr, betas=config.betas)
        self.opt_d = torch.optim.Adam(self.discriminators.parameters(), lr=config.lr, betas=config.betas)
        self.pool_x = ImagePool(config.pool_size, seed=config.seed)
        self.pool_y = ImagePool(config.pool_size, seed=config.seed + 1)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._ddp_g, self._ddp_d = self.generators, self.discriminators
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            for module in (self.generators, self.discriminators):
                # Buffers are fixed mesh tables (sparse, identical everywhere): nothing to broadcast.
                DDP._set_params_and_buffers_to_ignore_for_model(module, [n for n, _ in module.named_buffers()])
            self._ddp_g = DDP(self.generators, device_ids=ids, broadcast_buffers=False)
            self._ddp_d = DDP(self.discriminators, device_ids=ids, broadcast_buffers=False)

    # -- schedule ---------------------------------------------------------------------------------------
    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(max(len(self.x), len(self.y)) / self.global_batch))

    @property
    def total_steps(self) -> int:
        return self.config.max_steps or self.config.epochs * self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """Learning rate of both optimizers at ``step``."""
        cfg = self.config
        if cfg.schedule == "cosine":
            return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        if cfg.schedule == "step":
            epoch = step // self.steps_per_epoch
            return cfg.lr * cfg.lr_gamma ** sum(epoch >= m for m in cfg.milestones)
        return cfg.lr

    def batch_rows(self, step: int, n: int, stream: int) -> np.ndarray:
        """This process's rows of domain ``stream`` (0: X, 1: Y, of ``n`` scans) at ``step``: each
        epoch walks a fresh permutation (a function of seed, stream and epoch)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng((self.config.seed, stream, epoch)).permutation(n)
        order = np.resize(order, self.steps_per_epoch * self.global_batch)
        start = within * self.global_batch + self.rank * self.config.batch_size
        return order[start:start + self.config.batch_size]

    # -- one step -------------------------------------------------------------------------------------
    def _autocast(self):
        enabled = self.config.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self) -> dict[str, float]:
        """One optimisation step of generators and discriminators; returns the losses (averaged over
        processes). Raises :class:`TrainingDivergedError` (without stepping) on a non-finite loss."""
        w, step = self.config.weights, self.step
        lr = self.lr_at(step)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
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

        losses = torch.stack([loss_g, adv, cycle, identity, corr, loss_d]).detach().float()
        if self.distributed:
            torch.distributed.all_reduce(losses)
            losses /= self.world_size
        values = dict(zip(LOSS_NAMES, losses.tolist()))
        if not all(math.isfinite(v) for v in values.values()):
            where = f"; the last good state is in {self.checkpoint_path}" if self.checkpoint_path else ""
            raise TrainingDivergedError(
                f"training stopped at step {step}: non-finite loss "
                + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                + f"{where}. Lower the learning rate (now {lr:.3g}) or check the input maps.")
        self.opt_g.step()
        self.opt_d.step()
        self.step += 1
        return values

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

    # -- the loop -------------------------------------------------------------------------------------
    def train(self, until_step: int | None = None) -> list[dict[str, float]]:
        """Train up to ``until_step`` (default: :attr:`total_steps`); return the history."""
        end = self.total_steps if until_step is None else min(int(until_step), self.total_steps)
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=self.step, desc="S2SGAN", unit="step")
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
                    bar.set_postfix({k: f"{v:.3f}" for k, v in values.items() if k in ("G", "cycle", "corr", "D")})
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
        """Every tensor needed to resume: weights, Adam moments, image pools (CPU, contiguous)."""
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in (("generators", self.generators), ("discriminators", self.discriminators)):
            for key, value in module.state_dict().items():
                tensors[f"{prefix}.{key}"] = value
        for prefix, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            for index, state in opt.state_dict()["state"].items():
                for key, value in state.items():
                    tensors[f"{prefix}.state.{index}.{key}"] = torch.as_tensor(value)
        tensors.update(self.pool_x.state_tensors("pool_x"))
        tensors.update(self.pool_y.state_tensors("pool_y"))
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def metadata(self) -> dict[str, Any]:
        import surfharm

        return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                "surfharm_version": surfharm.__version__, "config": self.config.to_dict(), "step": self.step,
                "history": self.history,
                "opt_g_groups": _groups(self.opt_g), "opt_d_groups": _groups(self.opt_d)}

    def save_checkpoint(self, path=None) -> Path | None:
        """Write the checkpoint (rank 0 only; others return None). Default path: ``checkpoint_path``."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: give one here or to the trainer")
        if self.rank != 0:
            return None
        tensors, meta = self.state_tensors(), self.metadata()
        if self.checkpoint_extra is not None:
            extra_tensors, extra_meta = self.checkpoint_extra()
            tensors.update({f"extra.{k}": torch.as_tensor(v).contiguous() for k, v in extra_tensors.items()})
            meta["extra"] = extra_meta
        write_safetensors(path, tensors, meta)
        return path

    def load_checkpoint(self, path) -> dict[str, Any]:
        """Restore weights, optimizers, pools, step and history from ``path``; return its metadata.

        Raises ValueError when the checkpoint's configuration differs from this trainer's.
        """
        tensors, meta = read_safetensors(path, expected_format=CHECKPOINT_FORMAT)
        saved = TrainingConfig.from_dict(meta["config"])
        mine = self.config
        if replace(saved, epochs=mine.epochs, max_steps=mine.max_steps) != mine:
            diff = {k: (v, getattr(mine, k)) for k, v in vars(saved).items() if getattr(mine, k) != v}
            raise ValueError(f"checkpoint {path} was written with another configuration: "
                             + ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items()))
        for prefix, module in (("generators", self.generators), ("discriminators", self.discriminators)):
            module.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
        for prefix, opt, groups in (("opt_g", self.opt_g, meta["opt_g_groups"]),
                                    ("opt_d", self.opt_d, meta["opt_d_groups"])):
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith(prefix + ".state."):
                    index, name = key[len(prefix) + 7:].split(".", 1)
                    state.setdefault(int(index), {})[name] = value
            opt.load_state_dict({"state": state, "param_groups": groups})
        self.pool_x.load_tensors(tensors, "pool_x", self.device)
        self.pool_y.load_tensors(tensors, "pool_y", self.device)
        self.step = int(meta["step"])
        self.history = list(meta["history"])
        return meta


def _groups(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    groups = opt.state_dict()["param_groups"]
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in groups]


def _resolve_device(device, distributed: bool) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for but CUDA is not available here; use device='cpu'")
        if distributed and device.index is None:
            import os
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


# -- safetensors with JSON metadata --------------------------------------------------------------------

def write_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` to ``path`` (.safetensors) with ``metadata`` as JSON in the file's header,
    and the same JSON in ``path`` with suffix ``.json`` (for reading); both atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model file {path} must end in .safetensors")
    text = json.dumps(metadata, indent=2, sort_keys=True, default=json_default)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_METADATA_KEY: text})
    write_text_atomic(path.with_suffix(".json"), text + "\n")
    return path


def read_safetensors(path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file of :func:`write_safetensors`: ``(tensors, metadata)``; checks format and version."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    import surfharm

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    if _METADATA_KEY not in header:
        raise ValueError(f"{path} is a safetensors file but not a surfharm model (no '{_METADATA_KEY}' metadata)")
    meta = json.loads(header[_METADATA_KEY])
    if meta.get("format") != expected_format:
        raise ValueError(f"{path} holds a {meta.get('format')!r}, expected a {expected_format!r}")
    saved_major = str(meta.get("surfharm_version", "?")).split(".")[0]
    if saved_major != surfharm.__version__.split(".")[0]:
        raise ValueError(f"{path} was written by surfharm {meta.get('surfharm_version')}; this is surfharm "
                         f"{surfharm.__version__} (another major version): retrain the model")
    return tensors, meta

