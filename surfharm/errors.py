"""The package's exception base class.

Every error surfharm raises on purpose derives from :class:`SurfharmError` and from the built-in
class a caller would expect (``ValueError`` for bad input, ``RuntimeError`` for misuse), so
``except surfharm.SurfharmError`` catches all of them and ``except ValueError`` still works.
"""
from __future__ import annotations


class SurfharmError(Exception):
    """Base class of the errors surfharm raises; the message names the file or value and what was expected."""


class ModelFileError(SurfharmError, ValueError):
    """A model file that cannot be used: missing, damaged, of another method, or with impossible values."""


class HarmonizerInputError(SurfharmError, ValueError):
    """Input data that a harmonizer cannot use; the message names the value and what was expected.

    Defined here rather than in :mod:`surfharm.harmonize` so that readers below the harmonizers
    (e.g. the NIfTI reader of :mod:`surfharm.io.nifti`) can raise errors of this kind.
    """
