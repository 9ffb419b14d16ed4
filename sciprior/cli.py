"""Command line: ``sciprior info`` (more subcommands: reconstruct | train | batch as they land)."""

from __future__ import annotations

import argparse
import sys


def _info() -> int:
    import torch

    import sciprior.modalities  # noqa: F401  (registers operators)
    from sciprior.modalities.base import OPERATOR_REGISTRY

    print(f"torch {torch.__version__}  cuda={torch.cuda.is_available()}  threads={torch.get_num_threads()}")
    print("registered operators:", ", ".join(sorted(OPERATOR_REGISTRY)))
    from sciprior.solvers import available_solvers

    print("solvers:", ", ".join(available_solvers()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sciprior", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show the environment, registered operators and solvers")
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        return _info()
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

