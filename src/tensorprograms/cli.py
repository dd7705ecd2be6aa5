"""The ``tensorprograms`` command.

Example:
    >>> from tensorprograms.cli import build_parser
    >>> build_parser().parse_args(["tour", "--seeds", "2"]).seeds
    2
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def _tour(args) -> int:
    from . import tour

    quick = {"widths": (64, 256), "seeds": 2, "points": 9} if args.quick else None
    tour.main(out=args.out, widths=args.widths, seeds=args.seeds, kernel_options=quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensorprograms",
        description="Tensor Programs: finite widths and infinite-width limits.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tour = sub.add_parser(
        "tour",
        help="example programs: limits beside finite-width runs, convergence plot",
    )
    tour.add_argument("--out", default="figures", help="directory for the figure")
    tour.add_argument(
        "--widths", type=int, nargs="+", default=None, help="widths to run"
    )
    tour.add_argument("--seeds", type=int, default=8, help="seeds per width")
    tour.add_argument(
        "--quick", action="store_true", help="small kernel part (for smoke tests)"
    )
    tour.set_defaults(handler=_tour)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
