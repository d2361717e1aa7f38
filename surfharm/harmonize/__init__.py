"""Harmonizers: one fit/transform protocol (:mod:`surfharm.harmonize.base`) for every method."""
from surfharm.harmonize.base import (
    Harmonizer,
    HarmonizerInputError,
    NotFittedError,
    available,
    get,
    register,
)
from surfharm.harmonize import baselines  # noqa: F401  (registers raw, mean-shift, mean-std, global-scaling)

from surfharm.harmonize.combat import ComBat  # noqa: E402  (registers "combat")
from surfharm.harmonize.longitudinal import LongComBat  # noqa: E402  (registers "combat-long")
import surfharm.volumetric  # noqa: E402,F401  (registers the volumetric methods)

__all__ = ["ComBat", "S2SGAN", "Harmonizer", "LongComBat", "HarmonizerInputError", "NotFittedError", "available", "get", "register"]


def __getattr__(name):
    # S2SGAN needs torch (seconds to import): loaded on first use, so ComBat-only work stays light.
    if name == "S2SGAN":
        return get("s2sgan")
    raise AttributeError(f"module 'surfharm.harmonize' has no attribute {name!r}")
