"""The ``surfharm`` command: maps arguments to the Python API and nothing else.

Each subcommand lives in its own module of this package and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` (called with the parsed
namespace, returning an exit code). Add a new module's name to ``_SUBCOMMAND_MODULES``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from surfharm.errors import SurfharmError

_SUBCOMMAND_MODULES = (
    "benchmark",
    "combat",
    "selfcheck",
    "doctor",
    "resample",
    "render",
    "report",
    "volumetric",
    "harmonize",
    "apply",
    "demo",
    "s2sgan",
    "dcombat",
)


# Packages of the optional extras (pyproject.toml): a missing one is reported with the extra to install.
_OPTIONAL_EXTRAS = {"torch": "deep", "safetensors": "deep", "pyvista": "viz", "vtk": "viz"}


class CLIError(SurfharmError):
    """A user-facing error: printed as ``surfharm: error: <message>`` with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from surfharm import __version__

    parser = argparse.ArgumentParser(
        prog="surfharm",
        description="Harmonization of cortical surface maps across scanners and sites.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"surfharm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(f"surfharm.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, ValueError, KeyError) as exc:
        # Library errors carry messages that name the file and the expectation: show them plainly.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"surfharm {args.command}: error: {message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        # torch and pyvista are optional extras: say which one to install instead of a traceback.
        extra = _OPTIONAL_EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"surfharm {args.command}: error: {exc.name} is not installed; "
              f"install it with: pip install 'surfharm[{extra}]'", file=sys.stderr)
        return 2
    except OSError as exc:
        # Full disk, file-size limit, read-only folder, permissions: the path and the cause, no traceback.
        print(f"surfharm {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2


def os_error_message(exc: OSError) -> str:
    """``PATH: CAUSE`` for an operating-system error (its own text when it has no path)."""
    from surfharm._atomic import OutputWriteError

    if isinstance(exc, OutputWriteError) or not exc.filename:
        return str(exc)
    cause = exc.strerror or str(exc)
    target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
    return f"{target}: {cause}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
