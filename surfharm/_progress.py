"""Progress bars of long work (reading scans, benchmark folds, training), all tqdm, all on stderr.

A bar is shown when the caller asks for progress (``--quiet`` turns that off) and stderr is a
terminal, so logs and pipes stay clean; ``--progress`` on the command line (:func:`add_progress_flag`)
or :func:`force` shows bars on any stderr.
"""
from __future__ import annotations

import argparse
import sys

_FORCED = False


def force(on: bool = True) -> None:
    """Show bars even when stderr is not a terminal (``--progress``)."""
    global _FORCED
    _FORCED = bool(on)


def shown(requested: bool) -> bool:
    """Whether a bar asked for with ``requested`` is drawn."""
    if not requested:
        return False
    if _FORCED:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(requested: bool, **kwargs):
    """A tqdm bar on stderr, disabled unless :func:`shown`; ``kwargs`` go to tqdm (total, desc, unit...)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(disable=not shown(requested), **kwargs)


class _ForceAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        force(True)
        setattr(namespace, self.dest, True)


def add_progress_flag(parser) -> None:
    """Add ``--progress`` (bars even when stderr is not a terminal) to a subcommand's parser."""
    parser.add_argument("--progress", action=_ForceAction,
                        help="show progress bars even when stderr is not a terminal (default: only on a terminal; "
                             "--quiet turns them off)")
