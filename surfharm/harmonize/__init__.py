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
from surfharm.harmonize.s2sgan import S2SGAN  # noqa: E402  (registers "s2sgan")
import surfharm.volumetric  # noqa: E402,F401  (registers the volumetric methods)

__all__ = ["ComBat", "S2SGAN", "Harmonizer", "LongComBat", "HarmonizerInputError", "NotFittedError", "available", "get", "register"]
