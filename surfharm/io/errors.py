"""Errors raised when an input file cannot be used: the message names the file and what was expected."""
from __future__ import annotations

from surfharm.errors import SurfharmError


class InputFileError(SurfharmError, ValueError):
    """An input file that is missing, truncated, corrupt, of an unexpected format or size.

    Subclass of ValueError so that callers (and the CLI) that catch ValueError report it plainly.
    """


class InputTableError(SurfharmError, ValueError):
    """A participants / covariate / ROI table that cannot be used (missing column, duplicate id...)."""


class InputValueError(SurfharmError, ValueError):
    """Maps whose values cannot be right: every value missing (an empty scan), inf, or values outside
    the plausible range of the measure (negative thickness). The message names the scans and files."""
