"""The ``surfharm`` command: maps arguments to the Python API and nothing else.

Each subcommand lives in its own module of this package and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` (called with the parsed
namespace, returning an exit code). Add a new module's name to ``_SUBCOMMAND_MODULES``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

_SUBCOMMAND_MODULES = (
    "benchmark",
    "combat",
    "selfcheck",
    "resample",
    "render",
    "report",
    "volumetric",
    "harmonize",
    "apply",
    "demo",
    "s2sgan",
)


class CLIError(Exception):
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
