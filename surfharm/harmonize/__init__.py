"""Harmonizers: one fit/transform protocol (:mod:`surfharm.harmonize.base`) for every method."""
from surfharm.harmonize.base import (
    Harmonizer,
    HarmonizerInputError,
    NotFittedError,
    available,
    get,
    register,
)

__all__ = ["Harmonizer", "HarmonizerInputError", "NotFittedError", "available", "get", "register"]
