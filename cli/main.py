"""The `ddnm` command line: restore, serve, train and models.

Each command group is a module of this package that registers itself here through an
`add_parser(subparsers)` function that sets `func` on its parser; heavy imports happen inside the
command functions so that `ddnm --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# module paths that provide add_parser(subparsers); a module that is missing is skipped
COMMAND_MODULES = (
    "cli.restore",
    "cli.serve",
    "cli.train",
    "cli.models",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddnm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"ddnm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
