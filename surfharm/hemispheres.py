"""Hemisphere names: FreeSurfer's ``"lh"`` and ``"rh"``, everywhere in the public API.

Functions that take a hemisphere accept ``"lh"``/``"rh"`` (the documented spelling) and, as aliases,
``"left"``/``"right"`` (also ``"l"``/``"r"``, any case); they pass it through :func:`hemi_name`,
which returns ``"lh"`` or ``"rh"``.
"""
from __future__ import annotations

from surfharm.errors import SurfharmError

#: The two hemispheres, left first (the order of stacked left-then-right arrays).
HEMIS = ("lh", "rh")
#: Full English names, for figure and report labels.
LONG_NAMES = {"lh": "left", "rh": "right"}
_ALIASES = {"lh": "lh", "left": "lh", "l": "lh", "rh": "rh", "right": "rh", "r": "rh"}


class HemisphereError(SurfharmError, ValueError):
    """A value that names no hemisphere; the message lists the accepted names."""


def hemi_name(hemi, *, allow_both: bool = False) -> str:
    """``"lh"`` or ``"rh"`` for any accepted spelling of a hemisphere (``"both"`` too with ``allow_both``).

    Raises :class:`HemisphereError` (a ValueError) naming the value and the accepted names.
    """
    key = str(hemi).lower()
    if allow_both and key == "both":
        return "both"
    if key not in _ALIASES:
        expected = "'lh' or 'rh' ('left', 'right' accepted)" + (", or 'both'" if allow_both else "")
        raise HemisphereError(f"hemi={hemi!r} is not a hemisphere; expected {expected}")
    return _ALIASES[key]
