"""Shared command-line handling of the example scripts (``--quick`` and ``--out``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(REPO))


def parse_args(description: str, default_out: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (seconds)")
    parser.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return args
