"""Command line: ``sciprior <command> [args ...]``.

Each command is a module function ``main(argv: list[str]) -> int`` that receives the arguments after the
command name (add new commands to :data:`COMMANDS`):

- ``sciprior info``: the environment, the registered modalities and solvers;
- ``sciprior reconstruct CONFIG.yaml [--key value ...]``: one scan (:mod:`sciprior.app.reconstruct`);
- ``sciprior train CONFIG.yaml [--key value ...]``: train a prior with LightningCLI (:mod:`sciprior.training`);
- ``sciprior batch CONFIG.yaml [--key value ...]``: many inputs over devices and nodes (:mod:`sciprior.app.batch`).
"""

from __future__ import annotations

import importlib
import sys

#: command -> (module, function taking the remaining argv and returning an exit code)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("sciprior.cli", "info_main"),
    "reconstruct": ("sciprior.app.reconstruct", "main"),
    "train": ("sciprior.training.cli", "main_train"),
    "batch": ("sciprior.app.batch.cli", "main"),
}


def info_main(argv: list[str] | None = None) -> int:
    """``sciprior info``: torch/CUDA, the registered modalities (adapter, readers, samples, shipped prior), solvers."""
    import torch

    from sciprior import modalities
    from sciprior.solvers import available_solvers

    print(f"torch {torch.__version__}  cuda={torch.cuda.is_available()}  threads={torch.get_num_threads()}")
    print("modalities:")
    for name in modalities.names():
        m = modalities.get(name)
        parts = [f"adapter {m.adapter.__name__}" if m.adapter else "no adapter",
                 f"readers {', '.join(m.readers) or '-'}", f"samples {', '.join(m.samples) or '-'}",
                 "priors " + ", ".join([f"builtin:{name}"] * (m.prior is not None)
                                       + [f"builtin:{name}/{v}" for v in m.prior_variants])
                 if m.prior is not None or m.prior_variants else "no shipped prior"]
        print(f"  {name}: {m.description}\n    " + "; ".join(parts))
    print("solvers:", ", ".join(available_solvers()))
    return 0


def _usage() -> str:
    return "usage: sciprior {" + ",".join(COMMANDS) + "} ...\n\n" + (__doc__ or "")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"sciprior: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, fn = COMMANDS[command]
    return int(getattr(importlib.import_module(module), fn)(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
