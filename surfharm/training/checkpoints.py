"""Checkpoint files of a training run: one ``.safetensors`` file, never a pickle.

The file holds every tensor needed to resume (weights of both generators and discriminators, Adam's
moments, the image pools, and the caller's extra tensors under ``extra.``) with the JSON metadata
(format, package version, :class:`~surfharm.training.config.TrainingConfig`, step, history, the
optimizers' parameter groups and the caller's ``extra`` metadata) in its header and in a ``.json``
copy beside it. The container is :mod:`surfharm.io.model_files`'; this module knows what a
trainer puts in it and how to restore a trainer from it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from surfharm.errors import ModelFileError
from surfharm.io import model_files

if TYPE_CHECKING:
    from surfharm.training.trainer import Trainer

CHECKPOINT_FORMAT = "surfharm-s2sgan-checkpoint"
CHECKPOINT_VERSION = 1


def state_tensors(trainer: "Trainer") -> dict[str, torch.Tensor]:
    """Every tensor needed to resume ``trainer``: weights, Adam moments and the trainer's extra state
    (S2SGAN's image pools), CPU, contiguous."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in trainer.checkpoint_modules().items():
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value
    for prefix, opt in trainer.checkpoint_optimizers().items():
        for index, state in opt.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"{prefix}.state.{index}.{key}"] = torch.as_tensor(value)
    tensors.update(trainer.extra_state_tensors())
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def checkpoint_metadata(trainer: "Trainer") -> dict[str, Any]:
    """The JSON metadata of ``trainer``'s checkpoint (without the caller's ``extra``)."""
    import surfharm

    meta = {"format": trainer.checkpoint_format, "format_version": CHECKPOINT_VERSION,
            "surfharm_version": surfharm.__version__, "config": trainer.config.to_dict(), "step": trainer.step,
            "history": trainer.history}
    meta.update({f"{name}_groups": _groups(opt) for name, opt in trainer.checkpoint_optimizers().items()})
    return meta


def write_checkpoint(trainer: "Trainer", path) -> Path:
    """Write ``trainer``'s checkpoint to ``path`` (with the extra tensors and metadata of its
    ``checkpoint_extra``, if any)."""
    tensors, meta = state_tensors(trainer), checkpoint_metadata(trainer)
    if trainer.checkpoint_extra is not None:
        extra_tensors, extra_meta = trainer.checkpoint_extra()
        tensors.update({f"extra.{k}": torch.as_tensor(v).contiguous() for k, v in extra_tensors.items()})
        meta["extra"] = extra_meta
    write_safetensors(path, tensors, meta)
    return Path(path)


def restore_checkpoint(trainer: "Trainer", path) -> dict[str, Any]:
    """Restore weights, optimizers, extra state (pools), step and history of ``trainer`` from ``path``;
    return its metadata.

    Raises ValueError when the checkpoint's configuration differs from the trainer's.
    """
    tensors, meta = read_safetensors(path, expected_format=trainer.checkpoint_format)
    saved = type(trainer.config).from_dict(meta["config"])
    mine = trainer.config
    if replace(saved, epochs=mine.epochs, max_steps=mine.max_steps) != mine:
        diff = {k: (v, getattr(mine, k)) for k, v in vars(saved).items() if getattr(mine, k) != v}
        raise ValueError(f"checkpoint {path} was written with another configuration: "
                         + ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items()))
    for prefix, module in trainer.checkpoint_modules().items():
        module.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
    for prefix, opt in trainer.checkpoint_optimizers().items():
        groups = meta[f"{prefix}_groups"]
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix + ".state."):
                index, name = key[len(prefix) + 7:].split(".", 1)
                state.setdefault(int(index), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": groups})
    trainer.load_extra_state(tensors)
    trainer.step = int(meta["step"])
    trainer.history = list(meta["history"])
    return meta


def _groups(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    groups = opt.state_dict()["param_groups"]
    return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in groups]


# -- safetensors with JSON metadata --------------------------------------------------------------------

def write_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` to ``path`` (.safetensors) with ``metadata`` as JSON in the file's header,
    and the same JSON in ``path`` with suffix ``.json`` (for reading); both atomically
    (:func:`surfharm.io.model_files.write_safetensors`)."""
    return model_files.write_safetensors(path, tensors, metadata)


def read_safetensors(path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file of :func:`write_safetensors`: ``(tensors, metadata)``; checks format and version.

    The header is read by :func:`surfharm.io.model_files.read_safetensors_metadata`; the tensors
    come back as torch tensors (optimizer states and weights are loaded into torch modules).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    import surfharm

    meta = model_files.read_safetensors_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable safetensors file: {exc}") from None
    if meta.get("format") != expected_format:
        raise ModelFileError(f"{path} holds a {meta.get('format')!r}, expected a {expected_format!r}")
    saved_major = str(meta.get("surfharm_version", "?")).split(".")[0]
    if saved_major != surfharm.__version__.split(".")[0]:
        raise ModelFileError(f"{path} was written by surfharm {meta.get('surfharm_version')}; this is surfharm "
                             f"{surfharm.__version__} (another major version): retrain the model")
    return tensors, meta
