"""What the harmonizers that hold torch networks share: their weights in and out of model files,
the check of those weights (and of their per-site z-scoring statistics) at load, and the covariate
columns they condition on or keep.

Model files store each network's ``state_dict`` under a prefix (``"generator_xy."``, ``"model."``...)
next to the harmonizer's own arrays (see :class:`surfharm.harmonize.base.Harmonizer`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from surfharm.errors import HarmonizerInputError


def load_weights(network, arrays: dict[str, np.ndarray], prefix: str):
    """Load the arrays named ``prefix.<parameter>`` into ``network`` (a torch module); returns it.

    Raises KeyError naming the first missing or unexpected weights, which the model loader reports
    with the file's name (a file whose weights do not fit the parameters it records is damaged).
    """
    import torch

    weights = {k[len(prefix) + 1:]: torch.from_numpy(v.copy()) for k, v in arrays.items()
               if k.startswith(prefix + ".")}
    missing, unexpected = network.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise KeyError(f"{prefix} weights {sorted(missing)[:3] or sorted(unexpected)[:3]} (shape or architecture "
                       "differs from the parameters in the file)")
    return network


def check_weights(check, network, prefix: str) -> None:
    """Refuse a network with a non-finite weight, naming it (``check``: the loader's StateCheck)."""
    for key, value in network.state_dict().items():
        if value.is_floating_point():
            check.finite(f"{prefix}.{key}", value.detach().float().cpu().numpy())


def check_site_statistics(check, mean: np.ndarray, std: np.ndarray, mask: np.ndarray,
                          shape: tuple[int, int, int]) -> None:
    """Check per-site z-scoring statistics at load (``check``: the loader's StateCheck): ``mean`` and ``std``
    of ``shape`` (n_sites, n_channels, V), finite inside the (V,) ``mask``, ``std`` positive there."""
    for name, value in (("mean", mean), ("std", std)):
        check.shape(name, value, shape)
    where = np.broadcast_to(mask, shape)
    check.finite("mean", mean, where)
    check.finite("std", std, where, positive=True)


def covariate_columns(covariates, n_scans: int, names, option: str) -> np.ndarray:
    """(n_scans, p) float64 values of the covariate columns ``names`` (named by the option ``option``).

    Raises :class:`HarmonizerInputError` naming what is wrong: not a DataFrame, a missing column, a
    row count that is not the number of scans, missing or infinite values.
    """
    names = list(names)
    if not isinstance(covariates, pd.DataFrame):
        raise HarmonizerInputError(f"{option}={names} needs covariates as a DataFrame with those columns, "
                                   f"got {type(covariates).__name__}")
    missing = [c for c in names if c not in covariates.columns]
    if missing:
        raise HarmonizerInputError(f"covariates lack column(s) {missing} named in {option}; "
                                   f"columns are {list(covariates.columns)}")
    if len(covariates) != n_scans:
        raise HarmonizerInputError(f"covariates have {len(covariates)} rows for {n_scans} scans")
    values = covariates[names].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise HarmonizerInputError(f"covariates {names} hold missing or infinite values")
    return values
