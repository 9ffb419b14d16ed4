"""The reconstruction config: its schema, parsing, and every check that runs before any compute.

Config schema (YAML; every key is also a ``--key value`` command-line override)::

    modality:                      # a registered modality (sciprior.modalities.names()) and its adapter's settings
      name: NAME
      image_size: 256              # ... the keyword arguments of that modality's adapter
    input: sample:SAMPLE           # a file, a DICOM directory, or sample:NAME (samples of any modality)
    prior:                         # PriorSpec
      checkpoint: builtin:NAME     # checkpoint directory / .safetensors, or builtin:NAME (the modality's shipped prior)
      wrap: auto                   # auto | full | patch | slice
      roi: null                    # patch size for wrap=patch (default: the prior's image size)
      overlap: 0.25
    solver:                        # name + the keyword arguments of that solver function
      name: dds
      steps: 50
      eta: 0.85
    num_samples: 1                 # posterior samples (std map with > 1)
    seed: 0
    device: auto                   # auto | cpu | cuda | cuda:1 ...
    output_dir: outputs/run        # must be new, empty, or an earlier run's output (replaced only with overwrite)
    overwrite: false
    progress: true

The ``modality`` and ``solver`` sections work the same way: ``name`` picks a registered thing, the other keys
are checked against its signature (the adapter's ``__init__``, the solver function's keywords except
``denoiser``, ``problem``, ``num_samples``, ``seeds``, ``callback`` and ``progress``, which the runner sets).
Unknown or misspelt keys, wrong types, out-of-range values, missing input or checkpoint files, and a prior
whose channels, size or training data do not fit the modality fail with a message that names the key and the
file. Configs never name code: the earlier spelling ``modality: {class_path: ..., init_args: {...}}`` is still
read for the class paths the modalities declare (with a note giving the new spelling); any other
``class_path`` is refused without importing anything.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from sciprior import modalities
from sciprior.app.job import (
    DEFAULT_SOLVER,
    RUNNER_ARGS,
    ConfigError,
    Job,
    PriorSpec,
    adapter_class,
    adapter_keys,
    is_classical,
    make_adapter,
    solver_function,
    solver_keys,
)
from sciprior.app.validate import resolve_checkpoint, resolve_device, validate
from sciprior.io.yamlfiles import YAMLFileError, load_yaml
from sciprior.modalities.adapter import SECTION
from sciprior.ranges import PositiveInt, describe_parse_error

# ---------------------------------------------------------------------------------------------
# The old spelling of the modality section (read, never imported)
# ---------------------------------------------------------------------------------------------


def _modality_from_class_path(class_path: Any) -> str:
    name = modalities.from_class_path(str(class_path))
    if name is None:
        raise ConfigError(f"{SECTION}.class_path: {class_path!r} is not read (configs never name code); name a "
                          f"registered modality instead: {SECTION}: {{name: <{' | '.join(modalities.names())}>, ...}}")
    return name


def translate_legacy(data: Mapping[str, Any]) -> dict[str, Any]:
    """``modality: {class_path: ..., init_args: {...}}`` -> ``modality: {name: ..., ...}`` (with a note saying so)."""
    data = dict(data)
    section = data.get(SECTION)
    if not isinstance(section, Mapping) or not ({"class_path", "init_args"} & set(section)):
        return data
    section = dict(section)
    name = section.pop("name", None)
    if "class_path" in section:
        name = _modality_from_class_path(section.pop("class_path"))
    args = section.pop("init_args", None) or {}
    new = {"name": name, **section, **args}
    warnings.warn(f"{SECTION}: class_path/init_args is the old spelling; write {SECTION}: {{name: {name}, "
                  f"{', '.join(f'{k}: ...' for k in args)}}}", FutureWarning, stacklevel=3)
    data[SECTION] = new
    return data


def translate_legacy_argv(argv: Sequence[str]) -> list[str]:
    """``--modality.init_args.KEY`` -> ``--modality.KEY``; ``--modality.class_path X`` and ``--modality X`` ->
    ``--modality.name N`` (for the class paths the modalities declare; any other is refused)."""
    out: list[str] = []
    it = iter(range(len(argv)))
    old = f"--{SECTION}.init_args."
    for i in it:
        a = argv[i]
        if a.startswith(old):
            out.append(f"--{SECTION}." + a[len(old):])
        elif a == f"--{SECTION}.class_path" and i + 1 < len(argv):
            out += [f"--{SECTION}.name", _modality_from_class_path(argv[i + 1])]
            next(it, None)
        elif a.startswith(f"--{SECTION}.class_path="):
            out.append(f"--{SECTION}.name=" + _modality_from_class_path(a.split("=", 1)[1]))
        elif a == f"--{SECTION}" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):  # --modality OldAdapter
            out += [f"--{SECTION}.name", _modality_from_class_path(argv[i + 1])]
            next(it, None)
        else:
            out.append(a)
    return out


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def build_parser(modality: str | None, solver: str = DEFAULT_SOLVER, exit_on_error: bool = False):
    """The jsonargparse parser for modality ``modality`` and solver ``solver`` (their signatures form the
    ``modality`` and ``solver`` sections); ``modality=None`` gives only ``--modality.name`` (for ``--help``)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    fn = solver_function(solver)
    parser = ArgumentParser(prog="sciprior reconstruct", exit_on_error=exit_on_error,
                            description="Reconstruct one scan with a diffusion prior (see sciprior.app.config).")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file")
    parser.add_argument(f"--{SECTION}.name", type=str, required=True,
                        help=f"modality ({', '.join(modalities.names())}); its adapter's settings follow")
    if modality is not None:
        parser.add_method_arguments(adapter_class(modality), "__init__", SECTION)
    parser.add_argument("--input", type=str, required=True, help="input file / DICOM directory / sample:NAME")
    parser.add_class_arguments(PriorSpec, "prior")
    parser.add_argument("--solver.name", type=str, default=DEFAULT_SOLVER, help="solver (sciprior info lists them)")
    parser.add_function_arguments(fn, "solver", skip=set(RUNNER_ARGS) & set(inspect.signature(fn).parameters))
    parser.add_argument("--num_samples", type=PositiveInt, default=1, help="posterior samples (std map when > 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the solver's noise")
    parser.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--output_dir", type=str | None, default=None, help="directory for the outputs and report")
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar while sampling")
    parser.add_argument("--baseline", type=bool, default=True, help="also compute the classical baseline")
    parser.add_argument("--report", type=bool, default=True, help="write report.json and report.png")
    parser.add_argument("--overwrite", type=bool, default=False,
                        help="replace output_dir when it holds the results of an earlier run")
    return parser


def _load_yaml(path: str | os.PathLike, key: str) -> dict[str, Any]:
    try:
        data = load_yaml(path, key)
    except YAMLFileError as e:
        raise ConfigError(str(e), key=key) from None
    refuse_code(data, str(path))
    return data


def refuse_code(data: Any, where: str, path: str = "") -> None:
    """Refuse ``class_path`` / ``init_args`` anywhere but in the old modality section (which is translated to a
    registered name without importing anything): a config never names code."""
    if isinstance(data, Mapping):
        for k, v in data.items():
            here = f"{path}.{k}" if path else str(k)
            if k in ("class_path", "init_args") and path != SECTION:
                raise ConfigError(f"{here}: configs never name code ({where}); sections name registered things "
                                  f"(modality.name, solver.name)", key=here)
            refuse_code(v, where, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            refuse_code(v, where, f"{path}[{i}]")


def section_name(data: Any, section: str) -> str | None:
    """``data[section]["name"]`` of a config mapping (the old modality spelling counts too), or None."""
    if not isinstance(data, Mapping) or not isinstance(data.get(section), Mapping):
        return None
    sec = data[section]
    if section == SECTION and "class_path" in sec:
        return _modality_from_class_path(sec["class_path"])
    return None if sec.get("name") is None else str(sec["name"])


def section_name_from_argv(argv: Sequence[str], section: str) -> str | None:
    """The ``name`` of ``section`` given by ``--section.name`` or, failing that, by the last ``--config`` file."""
    name, files = None, []
    for i, a in enumerate(argv):
        if a == f"--{section}.name" and i + 1 < len(argv):
            name = argv[i + 1]
        elif a.startswith(f"--{section}.name="):
            name = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif a.startswith("--config="):
            files.append(a.split("=", 1)[1])
    if name is not None:
        return name
    for f in reversed(files):
        found = section_name(_load_yaml(f, "--config"), section)
        if found is not None:
            return found
    return None


def _expand_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"solver.steps": 10, "prior": {"wrap": "patch"}}`` -> nested dict (old ``modality.init_args.*`` keys read)."""
    out: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        key = str(key).replace(f"{SECTION}.init_args.", f"{SECTION}.")
        parts = key.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"overrides: key {key!r} conflicts with another override")
        if isinstance(value, Mapping) and isinstance(d.get(parts[-1]), dict):
            d[parts[-1]] = _merge(d[parts[-1]], value)
        else:
            d[parts[-1]] = copy.deepcopy(value)
    return out


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _friendly(e: Exception, modality: str | None, solver: str) -> ConfigError:
    """A jsonargparse error as a ConfigError; an unknown key of a section lists what that section accepts."""
    msg = str(e).strip()
    for section, name, keys in ((SECTION, modality, adapter_keys), ("solver", solver, solver_keys)):
        if name is None:
            continue
        m = None
        if "unrecognized" in msg or "does not accept" in msg:
            m = re.search(rf"(?:--)?{section}\.(\w+)", msg)
            if m is None and f"Group '{section}' does not accept" in msg:
                m = re.search(r"(?:option|key) '(\w+)'", msg)
        if m is not None:
            what = f"the {name} modality" if section == SECTION else f"solver {name!r}"
            return ConfigError(f"{section}.{m.group(1)}: unknown setting for {what}; it accepts: "
                               f"{', '.join(['name', *keys(name)])}  ({msg})")
    return parser_error(msg, "invalid reconstruction config")


def parser_error(msg: str, what: str) -> ConfigError:
    """A jsonargparse ``Parser key "KEY": ...`` message as ``KEY: <what is wrong>; expected <the type in words>``."""
    key, text = describe_parse_error(msg)
    return ConfigError(text if key is not None else f"{what}: {msg}", key=key)


def _names(data: Mapping[str, Any]) -> tuple[str, str]:
    modality = section_name(data, SECTION)
    if modality is None:
        raise ConfigError(f"{SECTION}.name: the config names no modality; choose from {', '.join(modalities.names())}")
    return modality, section_name(data, "solver") or DEFAULT_SOLVER


def parse_args(argv: Sequence[str]) -> Job:
    """``CONFIG.yaml [--key value ...]`` (or ``--config CONFIG.yaml ...``) -> a validated :class:`Job`."""
    argv = translate_legacy_argv(list(argv))
    if argv and not argv[0].startswith("-"):
        argv = ["--config", *argv]
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    if files and any("class_path" in (_load_yaml(f, "--config").get(SECTION) or {}) for f in files):
        # an old-spelling file: read it ourselves (translated), the command-line overrides on top
        data: dict[str, Any] = {}
        for f in files:
            data = _merge(data, translate_legacy(_load_yaml(f, "--config")))
        rest = [a for i, a in enumerate(argv) if a != "--config" and (i == 0 or argv[i - 1] != "--config")]
        return parse_config(data, _argv_overrides(rest))
    modality = section_name_from_argv(argv, SECTION)
    if modality is None:
        raise ConfigError(f"{SECTION}.name: the config names no modality; choose from {', '.join(modalities.names())}")
    solver = section_name_from_argv(argv, "solver") or DEFAULT_SOLVER
    parser = build_parser(modality, solver)
    try:
        ns = parser.parse_args(argv)
    except Exception as e:  # jsonargparse.ArgumentError and type errors
        raise _friendly(e, modality, solver) from e
    return _job_from_namespace(parser, ns, modality, solver)


def _argv_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs as overrides (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise ConfigError(f"unexpected command-line argument {a!r}")
        if "=" in a:
            key, value = a[2:].split("=", 1)
        elif i + 1 < len(argv):
            key, value = a[2:], argv[i + 1]
            i += 1
        else:
            raise ConfigError(f"--{a[2:]}: missing value")
        out[key] = yaml.safe_load(value)
        i += 1
    return out


def parse_config(config: str | os.PathLike | Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Job:
    """A YAML file (or dict) plus ``overrides`` (dotted keys or nested dicts) -> a validated :class:`Job`."""
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
        refuse_code(data, "config")
    else:
        data = _load_yaml(config, "config")
    data = translate_legacy(data)
    extra = _expand_overrides(overrides)
    for section in (SECTION, "solver"):  # a new name replaces the old section (other settings apply)
        new = (extra.get(section) or {}).get("name") if isinstance(extra.get(section), dict) else None
        if new is not None and isinstance(data.get(section), dict) and new != data[section].get("name") and \
                not any(str(k).startswith(f"{section}.") and not str(k).endswith(".name") for k in (overrides or {})):
            data = {**data, section: {}}
    data = _merge(data, extra)
    refuse_code(data, "config and overrides")
    modality, solver = _names(data)
    parser = build_parser(modality, solver)
    try:
        ns = parser.parse_object(data)
    except Exception as e:
        raise _friendly(e, modality, solver) from e
    return _job_from_namespace(parser, ns, modality, solver)


def _job_from_namespace(parser, ns, modality: str, solver: str) -> Job:
    echo = ns.clone().as_dict()
    echo.pop("config", None)
    echo.pop("__path__", None)
    kwargs = {k: v for k, v in vars(ns[SECTION]).items() if k != "name"}
    del ns[SECTION]
    try:
        init = parser.instantiate_classes(ns)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid reconstruction config: {e}") from e
    adapter = make_adapter(modality, kwargs)
    settings = {k: v for k, v in vars(init.solver).items() if k != "name"}
    settings = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items()}
    job = Job(modality=adapter, input=init.input, prior=init.prior, solver=solver, solver_settings=settings,
              num_samples=init.num_samples, seed=init.seed, device=init.device, output_dir=init.output_dir,
              progress=init.progress, baseline=init.baseline, report=init.report, overwrite=init.overwrite,
              config=echo)
    validate(job)
    return job


def check_solver_settings(solver: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``settings`` against the solver's signature (names and types), before any compute."""
    from jsonargparse import ArgumentParser

    fn = solver_function(solver)
    sub = ArgumentParser(exit_on_error=False)
    sub.add_function_arguments(fn, "solver", skip=set(RUNNER_ARGS) & set(inspect.signature(fn).parameters))
    try:
        ns = sub.parse_object({"solver": dict(settings)})
    except Exception as e:
        raise _friendly(e, None, solver) from e
    return {k: v for k, v in vars(ns.solver).items() if k in settings}


def help_parser(argv: Sequence[str]):
    """The parser for ``--help`` / ``--print_config``: the named modality's keys when one is named."""
    try:
        modality = section_name_from_argv(argv, SECTION)
    except ConfigError:
        modality = None
    return build_parser(modality, section_name_from_argv(argv, "solver") or DEFAULT_SOLVER, exit_on_error=True)


__all__ = ["ConfigError", "DEFAULT_SOLVER", "Job", "PriorSpec", "RUNNER_ARGS", "adapter_class", "build_parser",
           "check_solver_settings", "help_parser", "is_classical", "make_adapter", "parse_args", "parse_config",
           "resolve_checkpoint", "resolve_device", "solver_function", "solver_keys", "translate_legacy",
           "translate_legacy_argv", "validate"]
