"""Harmonizers: scikit-learn estimators with one contract (:mod:`surfharm.harmonize.base`) and one
model-file loader (:func:`~surfharm.harmonize.load`) for every method.

``import surfharm.harmonize`` loads the statistical methods only; the networks (torch) and the
volumetric methods (NIfTI) are imported the first time they are asked for.
"""
from surfharm.harmonize.base import (
    Harmonizer,
    HarmonizerInputError,
    NotFittedError,
    available,
    get,
    load,
    register,
    register_lazy,
    register_lazy_group,
    side_data_for,
)
from surfharm.harmonize import baselines  # noqa: F401  (registers raw, mean-shift, mean-std, global-scaling)
from surfharm.harmonize.combat import ComBat  # noqa: E402  (registers "combat")
from surfharm.harmonize.longitudinal import LongComBat  # noqa: E402  (registers "combat-long")
from surfharm.harmonize.covbat import CovBat  # noqa: E402  (registers "covbat")
from surfharm.harmonize.relief import RELIEF  # noqa: E402,F401  (registers "relief")
from surfharm.harmonize.san import SAN  # noqa: E402,F401  (registers "san")
from surfharm.harmonize.routing import routed_scorer  # noqa: E402

register_lazy("mispel-sphere", "surfharm.harmonize.mispel_sphere")  # torch: imported on first use
# The volumetric methods register themselves when their package is first imported.
register_lazy_group("surfharm.harmonize.volumetric")

__all__ = ["ComBat", "CovBat", "S2SGAN", "Harmonizer", "LongComBat", "HarmonizerInputError", "NotFittedError",
           "available", "get", "load", "register", "routed_scorer", "side_data_for"]


def __getattr__(name):
    # S2SGAN needs torch (seconds to import): loaded on first use, so ComBat-only work stays light.
    if name == "S2SGAN":
        return get("s2sgan")
    raise AttributeError(f"module 'surfharm.harmonize' has no attribute {name!r}")
