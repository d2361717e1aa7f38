"""Errors raised when an input file cannot be used: the message names the file and what was expected."""
from __future__ import annotations


class InputFileError(ValueError):
    """An input file that is missing, truncated, corrupt, of an unexpected format or size.

    Subclass of ValueError so that callers (and the CLI) that catch ValueError report it plainly.
    """


class InputTableError(ValueError):
    """A participants / covariate / ROI table that cannot be used (missing column, duplicate id...)."""
