"""The configuration of a training run: :class:`TrainingConfig` (written into every checkpoint)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from surfharm.models import LossWeights


def check_run_settings(config, schedules: tuple[str, ...], positive: tuple[str, ...],
                       max_steps_name: str = "max_steps") -> None:
    """The checks every training configuration shares; ``ValueError`` naming the setting.

    ``schedule`` one of ``schedules``; the fields named in ``positive`` positive ints; ``max_steps``
    a positive int or None (called ``max_steps_name`` in the message); ``lr`` a positive finite number.
    """
    if config.schedule not in schedules:
        names = ", ".join(repr(s) for s in schedules[:-1]) + f" or {schedules[-1]!r}"
        raise ValueError(f"schedule must be {names}, got {config.schedule!r}")
    for name in positive:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    steps = config.max_steps
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"{max_steps_name} must be a positive int or None, got {steps!r}")
    lr = config.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")


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
        check_run_settings(self, ("step", "cosine", "constant"),
                           ("batch_size", "epochs", "in_channels", "depth", "base_channels", "disc_channels"))

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
