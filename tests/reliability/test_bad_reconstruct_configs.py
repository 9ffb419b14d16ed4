"""Bad reconstruction configs: ``sciprior reconstruct`` refuses each one before any compute, naming the key or
file, and leaves nothing behind (tests/reliability/reliability_helpers.py states the four checks).

The base config is a real one (the bundled head CT, 30 views, 64 x 64, a tiny untrained prior recorded as trained
on CT slices); every case changes one thing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from reliability_helpers import (
    CT_TRAINED,
    MRI_TRAINED,
    ZEN,
    Spy,
    refused,
    run_main,
    run_subprocess,
    tiny_prior,
    tree,
    with_,
)

from sciprior.app.reconstruct import main


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    return {"ct": tiny_prior(root / "ct", metadata=CT_TRAINED), "mri": tiny_prior(root / "mri", metadata=MRI_TRAINED),
            "ct_narrow": tiny_prior(root / "narrow", metadata={"data": {"modality": "ct", "reader": {
                "name": "slices", "window": [-160.0, 240.0], "clip": True}}})}


def base(priors, out: Path) -> dict:
    return {"modality": {"name": "ct", "n_views": 30, "image_size": 64, "i0": 1e6}, "input": "sample:head_ct",
            "prior": {"checkpoint": str(priors["ct"])}, "solver": {"name": "dds", "steps": 2}, "device": "cpu",
            "progress": False, "output_dir": str(out)}



def without(cfg: dict, dotted: str) -> dict:
    cfg = copy.deepcopy(cfg)
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    del node[last]
    return cfg


# (id, how to build the config: a dict, a YAML text, or (dict, extra command-line args), rc, message pattern)
def cases(priors, tmp: Path) -> dict:
    b = base(priors, tmp / "out")
    return {
        # the file itself
        "empty-file": ("", 2, r"config.* is empty; expected a YAML mapping"),
        "yaml-list": ("- modality: ct\n- input: x\n", 2, r"holds a YAML list at the top level; expected a mapping"),
        "duplicate-key": ("modality: {name: ct}\ninput: sample:head_ct\ninput: sample:mni152\n", 2,
                          r"duplicate key 'input' \(first at line 2.*line 3"),
        "not-yaml": ("modality: {name: ct\n", 2, r"c\.yaml'?: not valid YAML"),
        "not-utf8": (b"\xff\xfe\x00modality", 2, r"is not UTF-8 text"),
        "python-tag": ("modality: !!python/object/apply:os.system ['touch MARKER']\n", 2,
                       r"uses the YAML tag .*python/object/apply:os\.system.*plain data only"),
        # keys and names
        "unknown-top-key": ({**b, "inptu": "sample:head_ct"}, 2, r"inptu"),
        "misspelt-modality-key": (with_(b, "modality.n_viewz", 3), 2,
                                  r"modality\.n_viewz: unknown setting for the ct modality; it accepts: .*n_views"),
        "misspelt-solver-key": (with_(b, "solver.stepz", 3), 2, r"solver\.stepz: unknown setting for solver 'dds'"),
        "unknown-modality": (with_(b, "modality.name", "pet"), 2, r"modality\.name: unknown modality 'pet'"),
        "modality-without-adapter": ({**b, "modality": {"name": "atmospheric"}}, 2,
                                     r"modality\.name: the atmospheric modality has no reconstruction adapter"),
        "no-modality": (without(b, "modality"), 2, r"modality\.name: the config names no modality"),
        "unknown-solver": (with_(b, "solver.name", "ddx"), 2, r"solver\.name: unknown solver 'ddx'"),
        "missing-input": (without(b, "input"), 2, r"input"),
        # ranges, at parse time
        "steps-zero": (with_(b, "solver.steps", 0), 2, r"solver\.steps: 0 does not conform .*expected an int >= 1"),
        "steps-negative": (with_(b, "solver.steps", -3), 2, r"solver\.steps: -3 .*expected an int >= 1"),
        "steps-fraction": (with_(b, "solver.steps", 2.5), 2, r"solver\.steps: 2\.5 not an integer"),
        "steps-string": (with_(b, "solver.steps", "many"), 2, r"solver\.steps: .*'many'"),
        "sigma-max-negative": (with_(b, "solver.sigma_max", -1.0), 2,
                               r"solver\.sigma_max: .*expected a finite number > 0 or null"),
        "eta-above-one": (with_(b, "solver.eta", 1.5), 2, r"solver\.eta: 1\.5 .*expected a number in \[0, 1\]"),
        "image-size-zero": (with_(b, "modality.image_size", 0), 2,
                            r"modality\.image_size: .*expected an int in \[1, 8192\]"),
        "image-size-negative": (with_(b, "modality.image_size", -64), 2, r"modality\.image_size: .*\[1, 8192\]"),
        "image-size-huge": (with_(b, "modality.image_size", 100_000), 2, r"modality\.image_size: .*\[1, 8192\]"),
        "image-size-out-of-memory": ((b, ["--modality.image_size", "8000", "--modality.n_views", "180"]), 2,
                                     r"modality\.image_size: a 8000x8000 CT problem with 180 views .*GiB of memory"),
        "n-views-zero": (with_(b, "modality.n_views", 0), 2, r"modality\.n_views: 0 .*expected an int >= 1"),
        "i0-negative": (with_(b, "modality.i0", -5.0), 2, r"modality\.i0: .*expected a finite number > 0 or null"),
        "hu-window-infinite": (with_(b, "modality.hu_window", [0.0, float("inf")]), 2,
                               r"modality\.hu_window: (inf|Infinity) .*expected a finite number"),
        "hu-window-reversed": (with_(b, "modality.hu_window", [500.0, -500.0]), 2,
                               r"modality\.hu_window needs high > low"),
        "angular-range": (with_(b, "modality.angular_range", 400.0), 2, r"angular_range must be in \(0, 360\]"),
        "num-samples-zero": ({**b, "num_samples": 0}, 2, r"num_samples: 0 .*expected an int >= 1"),
        "overlap-one": (with_(b, "prior.overlap", 1.0), 2, r"prior\.overlap must be in \[0, 1\)"),
        "roi-zero": (with_(b, "prior.roi", [0, 16]), 2, r"prior\.roi"),
        "slices-out-of-range": (with_(b, "modality.slices", [3, 9]), 2,
                                r"modality\.slices: slice range \(3, 9\) is empty or out of range for a volume with 1"),
        "device-bogus": ({**b, "device": "gpu9"}, 2, r"device: 'gpu9' is not a device"),
        # prior and input
        "checkpoint-missing": (with_(b, "prior.checkpoint", str(tmp / "nope")), 2,
                               r"prior\.checkpoint: no such checkpoint .*nope"),
        "builtin-unknown": (with_(b, "prior.checkpoint", "builtin:pet"), 2,
                            r"prior\.checkpoint: unknown builtin prior 'builtin:pet'; choose from builtin:ct"),
        "no-checkpoint-for-a-diffusion-solver": (with_(b, "prior.checkpoint", None), 2,
                                                 r"prior\.checkpoint: solver 'dds' needs a prior checkpoint"),
        "prior-of-another-modality": (with_(b, "prior.checkpoint", str(priors["mri"])), 2,
                                      r"the prior was trained on mri data .*not ct.*prior\.checkpoint"),
        "prior-of-another-window": (with_(b, "prior.checkpoint", str(priors["ct_narrow"])), 2,
                                    r"modality\.hu_window=\[-1024\.0, 3071\.0\].*set hu_window to \[-160\.0, 240\.0\]"),
        "unknown-sample": ({**b, "input": "sample:nope"}, 2, r"input: unknown sample 'sample:nope'; known samples"),
        "input-missing": ({**b, "input": str(tmp / "scan.dcm")}, 2, r"input: no such file or directory: .*scan\.dcm"),
        # where the results go
        "output-dir-empty-string": ({**b, "output_dir": ""}, 2, r"output_dir: is empty"),
        "output-name-too-long": ({**b, "output_dir": str(tmp / ("r" * 300))}, 2,
                                 r"output_dir: the name 'rrrr.* is 300 bytes long; this file system allows"),
        "output-under-a-file": ({**b, "output_dir": str(tmp / "afile" / "out")}, 2,
                                r"output_dir: .*afile/out' cannot be created: .*afile' is a file, not a directory"),
        "output-dir-with-other-files": ({**b, "output_dir": str(tmp / "notes")}, 2,
                                        r"output_dir: .*notes' already holds files that no sciprior run wrote "
                                        r"\(keep\.txt\)"),
    }


def _setup(tmp: Path) -> None:
    (tmp / "afile").write_text("a regular file")
    (tmp / "notes").mkdir()
    (tmp / "notes" / "keep.txt").write_text("the user's own file")


CASE_IDS = list(cases({"ct": "p", "mri": "p", "ct_narrow": "p"}, Path("/t")))


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_reconstruction_config_is_refused_before_compute(case, priors, tmp_path, monkeypatch):
    _setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    spec, rc, pattern = cases(priors, tmp_path)[case]
    extra: list[str] = []
    if isinstance(spec, tuple):
        spec, extra = spec
    cfg = tmp_path / "c.yaml"
    if isinstance(spec, bytes):
        cfg.write_bytes(spec)
    else:
        cfg.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    before = tree(tmp_path)
    spy = Spy(monkeypatch)
    outcome = run_main(main, [str(cfg), *extra])
    refused(outcome, rc, pattern, watched=tmp_path, before=before, spy=spy)
    assert spy.calls == [], f"compute started: {spy.calls}"  # not even the prior was loaded
    assert not (tmp_path / "MARKER").exists()


def test_an_earlier_run_is_replaced_only_with_overwrite_and_then_as_a_whole(priors, tmp_path, monkeypatch):
    """A rerun into an earlier run's directory is refused; with overwrite the directory is replaced whole (the
    earlier run's std.nii.gz, which the new run does not write, is gone); report.json lists every file."""
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({**base(priors, out), "num_samples": 2}))
    assert run_main(main, [str(cfg)]).rc == 0
    first = sorted(p.name for p in out.iterdir())
    assert "std.nii.gz" in first
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    spy = Spy(monkeypatch)
    again = run_main(main, [str(cfg), "--num_samples", "1"])
    refused(again, 2, r"output_dir: .*out' holds the results of another run .*set overwrite: true",
            watched=tmp_path, before=tree(tmp_path), spy=spy)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert run_main(main, [str(cfg), "--num_samples", "1", "--overwrite", "true"]).rc == 0
    now = sorted(p.name for p in out.iterdir())
    assert now == [".sciprior-run.json", "reconstruction.nii.gz", "report.json", "report.png"]
    listed = sorted(Path(f).name for f in json.loads((out / "report.json").read_text())["outputs"])
    assert listed == now
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # no staging directory left


def test_a_config_never_imports_what_it_names(priors, tmp_path):
    """class_path naming a module in the working directory (on sys.path for ``python -m``) or the standard
    library: refused, nothing imported (no marker file, no Zen of Python printed), exit status 2."""
    (tmp_path / "evil.py").write_text("open('MARKER', 'w').write('imported')\nclass Thing: pass\n")
    b = base(priors, tmp_path / "out")
    for name, cfg, extra, pattern in [
        ("modality", {**b, "modality": {"class_path": "evil.Thing"}}, [],
         r"modality\.class_path: 'evil\.Thing' is not read \(configs never name code\)"),
        ("zen", {**b, "modality": {"class_path": "this.Zen", "init_args": {}}}, [],
         r"modality\.class_path: 'this\.Zen' is not read"),
        ("solver", with_(b, "solver.class_path", "evil.Thing"), [], r"solver\.class_path: configs never name code"),
        ("prior", with_(b, "prior.class_path", "evil.Thing"), [], r"prior\.class_path: configs never name code"),
        ("command-line", b, ["--modality.class_path", "evil.Thing"], r"modality\.class_path: 'evil\.Thing' is not"),
    ]:
        (tmp_path / "c.yaml").write_text(json.dumps(cfg))
        before = tree(tmp_path)
        res = run_subprocess(["reconstruct", "c.yaml", *extra], cwd=tmp_path)
        refused(res, 2, pattern, watched=tmp_path, before=before)
        assert not (tmp_path / "MARKER").exists(), name
        assert ZEN not in res.out + res.err, name
