"""Bad inputs of ``sciprior batch`` (issue 15's reliability catalogue, the batch part).

Each case runs the batch command line (``sciprior.app.batch.cli.main``; in a subprocess for the hostile configs)
and asserts the exit status (2: a config error, before any compute; 1: some input failed), that the message names
the key, file or shape, that no item ran where that is possible (no record under ``.sciprior_batch/items/``, the
processor never called), and that nothing new is left in the working directory afterwards (for errors before
compute the whole workspace is byte-for-byte what it was: not even the output directory is created).

The hostile ones (a config naming code: ``subprocess:Popen``, ``builtins:eval``, ``os:system``, ``this.Zen``, a
module placed in the working directory, a ``!!python`` tag) each also assert that their marker file never appears
and that the module they name was never imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import batch_reliability_helpers as rh
import pytest

from sciprior.app.batch.cli import main
from sciprior.app.batch.reconstruct_item import ReconstructItem
from sciprior.app.batch.records import STATE_DIR

bh = rh.bh


def _tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> content hash (``dir`` for directories): what 'nothing new' is compared on."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = "dir"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "special"
    return out


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace: 3 CT slices in ct/, a fast reconstruction config, and a count of processor calls."""
    monkeypatch.chdir(tmp_path)
    inputs = bh.make_ct_inputs(tmp_path / "ct", 3)
    recon = bh.write_ct_config(tmp_path / "recon.yaml")
    calls: list[str] = []
    original = ReconstructItem.__call__

    def counting(self, spec):
        calls.append(spec.name)
        return original(self, spec)

    monkeypatch.setattr(ReconstructItem, "__call__", counting)
    return {"root": tmp_path, "inputs": inputs, "recon": recon, "calls": calls, "out": tmp_path / "out"}


def _config(ws, text: str, name: str = "batch.yaml") -> Path:
    p = ws["root"] / name
    p.write_text(text)
    return p


def _good(ws, **extra) -> str:
    """A valid batch config's lines (``extra`` replaces or adds top-level YAML lines)."""
    fields = {"inputs": f"'{ws['root']}/ct/*.nii.gz'", "output_dir": str(ws["out"]),
              "process_kwargs": f"{{config: {ws['recon']}}}", "progress": "false"}
    fields.update(extra)
    return "".join(f"{k}: {v}\n" for k, v in fields.items() if v is not None)


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _config_error(ws, capsys, argv: list[str], pattern: str | list[str]) -> str:
    """Exit 2, the message matching ``pattern`` (each of a list, in any order), nothing computed, nothing new in the
    workspace."""
    before = _tree(ws["root"])
    rc, err = _run_cli(argv, capsys)
    assert rc == 2, err[-2000:]
    for pat in [pattern] if isinstance(pattern, str) else pattern:
        assert re.search(pat, err), (pat, err[-2000:])
    assert "Traceback" not in err
    assert ws["calls"] == []  # the processor never ran
    assert not list(ws["root"].rglob(f"{STATE_DIR}/items/*.json"))
    assert _tree(ws["root"]) == before  # nothing created, changed or removed (not even output_dir)
    return err


# ---------------------------------------------------------------------------------------------------
# the config names code: refused before anything is imported (a subprocess with the working directory on
# sys.path first, as `python -m sciprior.app.batch` has it)


HOSTILE_MODULE = """\
from pathlib import Path
Path({marker!r}).write_text("imported")
def run(spec, **kw):
    Path({marker!r}).write_text("called")
"""

#: id -> (process_item, process_kwargs, the module that must never be imported)
HOSTILE = {
    "subprocess_popen": ("subprocess:Popen", "{{args: [touch, {marker}]}}", None),
    "builtins_eval": ("builtins:eval", "{{source: \"open('{marker}', 'w')\"}}", None),
    "os_system": ("os:system", "{{command: 'touch {marker}'}}", None),
    "this_zen": ("this.Zen", "{{}}", "this"),
    "module_in_cwd": ("hostile_mod:run", "{{}}", "hostile_mod"),
    "module_in_cwd_dotted": ("hostile_mod.run", "{{}}", "hostile_mod"),
    "sciprior_import_path": ("sciprior.app.batch.reconstruct_item:ReconstructItem", "{{config: {recon}}}", None),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """All hostile configs through the batch CLI in one subprocess; id -> its report (exit code, stderr, stdout,
    modules imported), plus the workspace before and after."""
    root = tmp_path_factory.mktemp("hostile")
    bh.make_ct_inputs(root / "ct", 2)
    recon = bh.write_ct_config(root / "recon.yaml")
    (root / "hostile_mod.py").write_text(HOSTILE_MODULE.format(marker=str(root / "marker_hostile_mod")))
    configs = []
    for case, (target, kwargs, _) in HOSTILE.items():
        marker = root / f"marker_{case}"
        cfg = root / f"{case}.yaml"
        cfg.write_text(f"inputs: '{root}/ct/*.nii.gz'\noutput_dir: {root / ('out_' + case)}\n"
                       f"process_item: {target}\nprocess_kwargs: {kwargs.format(marker=marker, recon=recon)}\n")
        configs.append(["--config", str(cfg)])
    # the same targets on the command line, over a valid config
    good = root / "good.yaml"
    good.write_text(f"inputs: '{root}/ct/*.nii.gz'\noutput_dir: {root / 'out_cli'}\n"
                    f"process_kwargs: {{config: {recon}}}\n")
    configs.append([str(good), "--process_item", "subprocess:Popen", "--process_kwargs",
                    f"{{args: [touch, {root / 'marker_cli_popen'}]}}"])
    configs.append([str(good), "--process_item", "hostile_mod:run"])
    # a YAML tag that would run a shell command if the file were loaded unsafely
    tag = root / "tag.yaml"
    tag.write_text(f"inputs: '{root}/ct/*.nii.gz'\noutput_dir: {root / 'out_tag'}\n"
                   f"process_kwargs: !!python/object/apply:os.system ['touch {root / 'marker_tag'}']\n")
    configs.append([str(tag)])
    tag2 = root / "tag2.yaml"
    tag2.write_text(f"inputs: '{root}/ct/*.nii.gz'\noutput_dir: {root / 'out_tag2'}\n"
                    f"process_item: !!python/name:hostile_mod.run\n")
    configs.append([str(tag2)])
    (root / "argv.json").write_text(json.dumps(configs))
    before = _tree(root)
    r = subprocess.run([sys.executable, str(rh.HERE), "cli", str(root), str(root / "argv.json")], env=rh.env(),
                       capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    reports = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == len(configs), r.stdout[-3000:] + r.stderr[-3000:]
    by_id = dict(zip([*HOSTILE, "cli_popen", "cli_module_in_cwd", "yaml_tag_os_system", "yaml_tag_python_name"],
                     reports))
    return {"root": root, "reports": by_id, "before": before, "after": _tree(root)}


@pytest.mark.parametrize("case", [*HOSTILE, "cli_popen", "cli_module_in_cwd"])
def test_a_config_naming_code_is_refused_and_nothing_is_imported(hostile, case):
    rep = hostile["reports"][case]
    root = hostile["root"]
    assert rep["rc"] == 2, rep
    assert "sciprior batch: error: process_item: unknown processor" in rep["stderr"], rep["stderr"]
    assert "registered: reconstruct" in rep["stderr"] and "never an import path" in rep["stderr"]
    assert "Traceback" not in rep["stderr"]
    assert not list(root.glob("marker_*")), sorted(p.name for p in root.glob("marker_*"))
    assert "hostile_mod" not in rep["imported"] and "this" not in rep["imported"]
    assert "Zen of Python" not in rep["stdout"] and "Beautiful is better" not in rep["stdout"]
    module = HOSTILE.get(case, (None, None, None))[2]
    assert module is None or module not in rep["imported"]
    assert not (root / f"out_{case}").exists() and not (root / "out_cli").exists()
    assert hostile["after"] == hostile["before"]  # no marker, no output directory, no __pycache__ of hostile_mod


@pytest.mark.parametrize("case", ["yaml_tag_os_system", "yaml_tag_python_name"])
def test_a_yaml_tag_is_refused_naming_the_file_and_line(hostile, case):
    rep = hostile["reports"][case]
    assert rep["rc"] == 2, rep
    name = "tag.yaml" if case == "yaml_tag_os_system" else "tag2.yaml"
    tag = "python/object/apply:os.system" if case == "yaml_tag_os_system" else "python/name:hostile_mod.run"
    err = rep["stderr"]
    assert re.search(rf"--config:? '[^']*{name}'", err) and re.search(r"\bline 3\b", err) and tag in err, err
    assert not list(hostile["root"].glob("marker_*")) and "hostile_mod" not in rep["imported"]
    assert hostile["after"] == hostile["before"]


# ---------------------------------------------------------------------------------------------------
# the processor and its settings


def test_an_unregistered_name_lists_the_registered_ones(ws, capsys):
    cfg = _config(ws, _good(ws, process_item="reconstruction"))
    _config_error(ws, capsys, [cfg], r"process_item: unknown processor 'reconstruction'; registered: reconstruct$")


def test_a_broken_installed_processor_is_named(ws, capsys, monkeypatch):
    site = ws["root"] / "site"
    bh.install_processor(site, {"broken": "no_such_module_anywhere:Processor"})
    monkeypatch.syspath_prepend(str(site))
    cfg = _config(ws, _good(ws, process_item="broken"))
    _config_error(ws, capsys, [cfg], r"process_item: processor 'broken' \(entry point 'no_such_module_anywhere:"
                                     r"Processor' of the group 'sciprior.processors'\) cannot be loaded")


def test_missing_process_kwargs_config(ws, capsys):
    cfg = _config(ws, _good(ws, process_kwargs=None))
    _config_error(ws, capsys, [cfg], r"process_kwargs\.config: processor 'reconstruct' needs this setting \(it "
                                     r"accepts: config, overrides\)")


def test_a_misspelt_process_kwargs_key(ws, capsys):
    cfg = _config(ws, _good(ws, process_kwargs=f"{{config: {ws['recon']}, overides: {{solver.steps: 3}}}}"))
    _config_error(ws, capsys, [cfg], r"process_kwargs\.overides: unknown setting of processor 'reconstruct'; "
                                     r"it accepts: config, overrides")


def test_a_missing_reconstruction_config_file(ws, capsys):
    cfg = _config(ws, _good(ws, process_kwargs="{config: nope/recon.yaml}"))
    _config_error(ws, capsys, [cfg], r"process_kwargs\.config: the reconstruction config 'nope/recon\.yaml' does "
                                     r"not exist")


def test_a_typo_in_the_reconstruction_config_names_the_key_and_file(ws, capsys):
    text = ws["recon"].read_text().replace("name: adjoint", "name: adjoint\n  iterz: 3")
    bad = ws["root"] / "recon_typo.yaml"
    bad.write_text(text)
    cfg = _config(ws, _good(ws, process_kwargs=f"{{config: {bad}}}"))
    _config_error(ws, capsys, [cfg], rf"process_kwargs\.config '{re.escape(str(bad))}': solver\.iterz: unknown "
                                     r"setting for solver 'adjoint'")


def test_an_out_of_range_value_through_process_kwargs_overrides(ws, capsys):
    cfg = _config(ws, _good(ws, process_kwargs=f"{{config: {ws['recon']}, overrides: {{modality.n_views: 0}}}}"))
    _config_error(ws, capsys, [cfg], [r"process_kwargs\.config '\S*recon\.yaml': modality\.n_views\b", r"\b0\b",
                                      r">= 1"])


def test_an_override_of_a_per_item_key_is_refused(ws, capsys):
    cfg = _config(ws, _good(ws, process_kwargs=f"{{config: {ws['recon']}, overrides: {{output_dir: /tmp/x}}}}"))
    _config_error(ws, capsys, [cfg], r"process_kwargs\.overrides\.output_dir: set for every item by the batch")


# ---------------------------------------------------------------------------------------------------
# inputs


def test_an_inputs_glob_that_matches_nothing(ws, capsys):
    cfg = _config(ws, _good(ws, inputs=f"'{ws['root']}/scans/*.dcm'"))
    _config_error(ws, capsys, [cfg], rf"inputs: the glob '{re.escape(str(ws['root']))}/scans/\*\.dcm' matched no "
                                     "files")


def test_a_manifest_with_missing_files(ws, capsys):
    (ws["root"] / "list.csv").write_text("path\nct/ct_0.nii.gz\nct/gone.nii.gz\nct/ct_1.nii.gz\nct/lost.nii.gz\n")
    cfg = _config(ws, _good(ws, inputs="list.csv"))
    _config_error(ws, capsys, [cfg], r"inputs: manifest \S*list\.csv lists 2 missing input\(s\): line 3: "
                                     r"\S*gone\.nii\.gz; line 5: \S*lost\.nii\.gz")


def test_a_manifest_without_a_path_column(ws, capsys):
    (ws["root"] / "list.csv").write_text("filename,name\nct/ct_0.nii.gz,a\n")
    cfg = _config(ws, _good(ws, inputs="list.csv"))
    _config_error(ws, capsys, [cfg], r"inputs: manifest \S*list\.csv needs a column named one of \('path', "
                                     r"'input', 'file'\); its header is \['filename', 'name'\]")


def test_an_empty_manifest(ws, capsys):
    (ws["root"] / "list.txt").write_text("# nothing yet\n\n")
    cfg = _config(ws, _good(ws, inputs="list.txt"))
    _config_error(ws, capsys, [cfg], r"inputs: manifest \S*list\.txt lists no inputs")


def test_duplicate_item_names(ws, capsys):
    (ws["root"] / "list.csv").write_text("path,name\nct/ct_0.nii.gz,scan\nct/ct_1.nii.gz,scan\n")
    cfg = _config(ws, _good(ws, inputs="list.csv"))
    _config_error(ws, capsys, [cfg], r"inputs: item names are not unique: \['scan'\]")


def test_an_item_name_with_a_path_separator(ws, capsys):
    (ws["root"] / "list.csv").write_text("path,name\nct/ct_0.nii.gz,../escape\nct/ct_1.nii.gz,b\n")
    cfg = _config(ws, _good(ws, inputs="list.csv"))
    _config_error(ws, capsys, [cfg], r"inputs: \S*ct_0\.nii\.gz: item name '\.\./escape' cannot be used as a file "
                                     "name")


def test_inputs_inside_the_output_directory_would_be_overwritten(ws, capsys):
    cfg = _config(ws, _good(ws, output_dir=str(ws["root"] / "ct")))
    _config_error(ws, capsys, [cfg], r"inputs: \S*ct_0\.nii\.gz lies in output_dir '\S*ct' where the outputs of "
                                     r"item 'ct_0' \(\S*ct_0\*\) are written")


@contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer appears)."""
    def boom(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s: the batch hangs")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _summary(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((out / "summary.json").read_text())}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_among_the_inputs_is_recorded_failed_and_the_others_finish(ws, capsys):
    fifo = ws["root"] / "ct" / "a_fifo.nii.gz"  # sorted first: the config check must not open it either
    os.mkfifo(fifo)
    cfg = _config(ws, _good(ws))
    with _deadline(120):
        rc, err = _run_cli([cfg], capsys)
    assert rc == 1, err[-2000:]
    rows = _summary(ws["out"])
    assert {n: r["status"] for n, r in rows.items()} == {"a_fifo": "failed", "ct_0": "ok", "ct_1": "ok", "ct_2": "ok"}
    assert f"input {str(fifo)!r} is a FIFO (named pipe), not a regular file or directory" in rows["a_fifo"]["error"]
    assert "a_fifo" not in ws["calls"] and sorted(ws["calls"]) == ["ct_0", "ct_1", "ct_2"]
    assert "1 input(s) failed: a_fifo" in err
    assert not (ws["out"] / "a_fifo").exists() and not list(ws["out"].glob(".tmp-*"))


def test_an_unreadable_first_input_does_not_stop_the_batch(ws, capsys):
    bad = ws["root"] / "ct" / "a_bad.nii.gz"  # sorted first
    bad.write_bytes(b"\x89PNG but not really" + bytes(200))
    cfg = _config(ws, _good(ws))
    rc, err = _run_cli([cfg], capsys)
    assert rc == 1, err[-2000:]
    rows = _summary(ws["out"])
    assert {n: r["status"] for n, r in rows.items()} == {"a_bad": "failed", "ct_0": "ok", "ct_1": "ok", "ct_2": "ok"}
    assert str(bad) in rows["a_bad"]["error"] and rows["a_bad"]["error"].startswith("ConfigError: input:")
    assert sorted(p.name for p in ws["out"].iterdir() if not p.name.startswith(".")) == [
        "ct_0", "ct_1", "ct_2", "summary.csv", "summary.json"]


def test_a_corrupt_input_in_the_middle_is_recorded_failed(ws, capsys):
    import gzip

    mid = ws["inputs"][1]
    raw = gzip.decompress(mid.read_bytes())
    mid.write_bytes(gzip.compress(raw[: 352 + 200]))  # the header is whole, the voxels are cut off
    cfg = _config(ws, _good(ws))
    rc, err = _run_cli([cfg], capsys)
    assert rc == 1, err[-2000:]
    rows = _summary(ws["out"])
    assert {n: r["status"] for n, r in rows.items()} == {"ct_0": "ok", "ct_1": "failed", "ct_2": "ok"}
    assert f"cannot read the data of NIfTI file {str(mid)!r}" in rows["ct_1"]["error"]
    assert not (ws["out"] / "ct_1").exists() and not list(ws["out"].glob(".tmp-*"))


# ---------------------------------------------------------------------------------------------------
# the batch config file itself


def test_an_empty_config_file(ws, capsys):
    cfg = _config(ws, "")
    _config_error(ws, capsys, [cfg], [rf"--config:? '{re.escape(str(cfg))}'", r"\bempty\b"])


def test_a_config_that_is_a_yaml_list(ws, capsys):
    cfg = _config(ws, "- inputs: a\n- output_dir: b\n")
    _config_error(ws, capsys, [cfg], [rf"--config:? '{re.escape(str(cfg))}'", r"\blist\b", r"\bmapping\b"])


def test_a_duplicate_key_names_the_file_and_both_lines(ws, capsys):
    cfg = _config(ws, _good(ws) + f"output_dir: {ws['root'] / 'elsewhere'}\n")
    _config_error(ws, capsys, [cfg], [rf"--config:? '{re.escape(str(cfg))}'", r"duplicate key 'output_dir'",
                                      r"\bline 2\b", r"\bline 5\b"])


def test_a_duplicate_key_in_a_nested_mapping(ws, capsys):
    cfg = _config(ws, _good(ws, process_kwargs=f"{{config: {ws['recon']}, config: other.yaml}}"))
    _config_error(ws, capsys, [cfg], [rf"--config:? '{re.escape(str(cfg))}'", r"duplicate key 'config'",
                                      r"\bline 3\b"])


def test_a_config_file_that_does_not_exist(ws, capsys):
    _config_error(ws, capsys, [ws["root"] / "nope.yaml"], r"--config: no such file '\S*nope\.yaml'")


def test_an_unknown_top_level_key(ws, capsys):
    cfg = _config(ws, _good(ws, devicez=2))
    _config_error(ws, capsys, [cfg], r"devicez: not a setting of a batch config; the settings are: inputs, "
                                     r"output_dir, process_item")


def test_an_unknown_key_on_the_command_line(ws, capsys):
    cfg = _config(ws, _good(ws))
    _config_error(ws, capsys, [cfg, "--num_threadz", "2"], r"num_threadz: not a setting of a batch config")


def test_a_wrong_type(ws, capsys):
    cfg = _config(ws, _good(ws, num_nodes="many"))
    _config_error(ws, capsys, [cfg], r"num_nodes: Expected a <class 'int'>\. Got value: many")


# ---------------------------------------------------------------------------------------------------
# where the outputs go, and how the run is spread


def test_output_dir_is_an_existing_regular_file(ws, capsys):
    target = ws["root"] / "results.txt"
    target.write_text("keep me\n")
    cfg = _config(ws, _good(ws, output_dir=str(target)))
    _config_error(ws, capsys, [cfg], rf"output_dir: '{re.escape(str(target))}' exists and is not a directory")
    assert target.read_text() == "keep me\n"


def test_output_dir_under_a_regular_file(ws, capsys):
    (ws["root"] / "results.txt").write_text("keep me\n")
    cfg = _config(ws, _good(ws, output_dir=str(ws["root"] / "results.txt" / "run1")))
    _config_error(ws, capsys, [cfg], r"output_dir: '\S*results\.txt/run1' cannot be created: '\S*results\.txt' is "
                                     "not a directory")


def test_an_empty_output_dir(ws, capsys):
    cfg = _config(ws, _good(ws, output_dir="''"))
    _config_error(ws, capsys, [cfg], r"output_dir: empty")


@pytest.mark.parametrize("value", ["0", "-1", "-4", "[]", "'0'", "zero"])
def test_devices_zero_or_negative(ws, capsys, value):
    cfg = _config(ws, _good(ws, devices=value))
    _config_error(ws, capsys, [cfg], r"devices: expected a number of devices >= 1, 'auto', or a non-empty list")


@pytest.mark.parametrize("key", ["num_threads", "num_nodes"])
def test_num_threads_or_num_nodes_zero(ws, capsys, key):
    cfg = _config(ws, _good(ws, **{key: "0"}))
    _config_error(ws, capsys, [cfg], rf"{key}: expected an integer >= 1")


def test_an_accelerator_that_is_not_there(ws, capsys):
    cfg = _config(ws, _good(ws, accelerator="gpu"))
    _config_error(ws, capsys, [cfg], r"accelerator / devices / num_nodes / strategy: the Lightning Trainer refuses "
                                     r"accelerator='gpu'")


def test_an_unknown_strategy(ws, capsys):
    cfg = _config(ws, _good(ws, strategy="ddp_bogus"))
    _config_error(ws, capsys, [cfg], r"the Lightning Trainer refuses .*strategy='ddp_bogus'")
