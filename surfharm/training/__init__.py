"""Training of S2SGAN's cycle-consistent pair of spherical generators (importable; CLI ``surfharm s2sgan train``).

One module per job:

* :mod:`~surfharm.training.config`: :class:`TrainingConfig`, everything that defines a run (networks,
  optimisation, loss weights as :class:`surfharm.models.LossWeights`, seed);
* :mod:`~surfharm.training.data`: :class:`DomainData`, the normalised training scans of one site;
* :mod:`~surfharm.training.trainer`: :class:`Trainer` (schedule, the loop, checkpoints,
  DistributedDataParallel, autocast; shared by every network harmonizer), S2SGAN's
  :class:`CycleGANTrainer` and :class:`TrainingDivergedError`;
* :mod:`~surfharm.training.checkpoints`: checkpoint files (what a trainer writes, how it is restored),
  in the ``.safetensors`` container of :mod:`surfharm.io.model_files`.
"""
from surfharm.training.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    read_safetensors,
    write_safetensors,
)
from surfharm.training.config import TrainingConfig
from surfharm.training.data import DomainData
from surfharm.training.trainer import LOSS_NAMES, CycleGANTrainer, Trainer, TrainingDivergedError

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "LOSS_NAMES", "CycleGANTrainer", "DomainData", "TrainingConfig",
    "Trainer", "TrainingDivergedError", "read_safetensors", "write_safetensors",
]
