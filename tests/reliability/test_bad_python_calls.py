"""Bad arguments from Python: the library functions refuse them as the command line does, naming the function or
key and what it accepts, before any compute (solvers get ``None`` for the denoiser and problem here: the check
must come before either is touched), and a reconstruction writes nothing (the four checks of
tests/reliability/reliability_helpers.py where they apply).
"""

from __future__ import annotations

import inspect

import pytest
from reliability_helpers import CT_TRAINED, MRI_TRAINED, Spy, tiny_prior, tree

from sciprior.app import run_reconstruction
from sciprior.app.batch import run_batch
from sciprior.app.config import parse_config
from sciprior.app.job import ConfigError
from sciprior.datasets.module import PriorDataModule
from sciprior.modalities.ct.adapter import CTAdapter
from sciprior.modalities.mri.adapter import MRIAdapter
from sciprior.priors.checkpoint import CheckpointError, load_checkpoint
from sciprior.solvers import SOLVERS, get_solver


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_refuses_zero_steps_before_touching_its_inputs(name):
    fn = get_solver(name)
    assert "steps" in inspect.signature(fn).parameters
    with pytest.raises(ValueError, match=rf"^{fn.__name__}: steps=0; expected an int >= 1$"):
        fn(None, None, steps=0)


@pytest.mark.parametrize("name, kwargs, pattern", [
    ("dds", {"eta": 1.5}, r"dds: eta=1\.5; expected a number in \[0, 1\]"),
    ("dds", {"sigma_max": -1.0}, r"dds: sigma_max=-1\.0; expected a finite number > 0 or None"),
    ("dps", {"zeta": float("nan")}, r"dps: zeta=nan; expected a finite number > 0"),
    ("edm", {"s_churn": -1.0}, r"edm_sampler: s_churn=-1\.0; expected a finite number >= 0"),
    ("cgls", {"iters": 0}, r"cgls: iters=0; expected an int >= 1"),
    ("tv", {"lam": -0.1}, r"tv_pdhg: lam=-0\.1; expected a finite number >= 0"),
])
def test_solver_settings_out_of_range(name, kwargs, pattern):
    fn = get_solver(name)
    args = (None, None) if name in SOLVERS else (None,)
    with pytest.raises(ValueError, match=pattern):
        fn(*args, **kwargs)


@pytest.mark.parametrize("make, pattern", [
    (lambda: CTAdapter(n_views=0), r"CTAdapter: n_views=0; expected an int >= 1"),
    (lambda: CTAdapter(image_size=-64), r"CTAdapter: image_size=-64; expected an int in \[1, 8192\]"),
    (lambda: CTAdapter(geometry="cone"), r"CTAdapter: geometry='cone'; expected one of 'parallel', 'fan'"),
    (lambda: CTAdapter(i0=float("inf")), r"CTAdapter: i0=inf; expected a finite number > 0 or None"),
    (lambda: MRIAdapter(acceleration=0.0), r"MRIAdapter: acceleration=0\.0; expected a finite number > 0"),
    (lambda: MRIAdapter(image_model="phase"), r"MRIAdapter: image_model='phase'; expected one of 'magnitude'"),
    (lambda: PriorDataModule(modality="ct", paths=["x.dcm"], batch_size=0), r"data\.batch_size must be >= 1, got 0"),
    (lambda: PriorDataModule(modality="pet", paths=["x.dcm"]), r"data\.modality: unknown modality 'pet'"),
])
def test_adapters_and_data_refuse_bad_arguments(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


@pytest.mark.parametrize("config, overrides, pattern", [
    ({"modality": {"class_path": "this.Zen"}, "input": "sample:head_ct"}, None,
     r"modality\.class_path: 'this\.Zen' is not read \(configs never name code\)"),
    ({"modality": {"name": "ct"}, "input": "sample:head_ct"}, {"solver.class_path": "os.system"},
     r"solver\.class_path: configs never name code"),
    ({"modality": {"name": "ct"}, "input": "sample:head_ct", "solver": {"name": "dds", "steps": 0}}, None,
     r"solver\.steps: 0 .*expected an int >= 1"),
    ({"modality": {"name": "ct", "n_viewz": 3}, "input": "sample:head_ct"}, None, r"modality\.n_viewz"),
])
def test_parse_config_from_python(config, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_config(config, overrides)


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    return {"ct": tiny_prior(root / "ct", metadata=CT_TRAINED), "mri": tiny_prior(root / "mri", metadata=MRI_TRAINED)}


@pytest.mark.parametrize("case", ["steps-zero", "unknown-setting", "prior-of-mri", "output-under-a-file",
                                  "num-samples-zero", "input-missing"])
def test_run_reconstruction_refuses_before_compute_and_writes_nothing(case, priors, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "out"
    kw = dict(prior=str(priors["ct"]), solver="dds", solver_settings={"steps": 2}, output_dir=str(out),
              progress=False, device="cpu")
    inp = "sample:head_ct"
    pattern = {
        "steps-zero": r"solver\.steps: 0 .*expected an int >= 1",
        "unknown-setting": r"solver\.stepz: unknown setting for solver 'dds'",
        "prior-of-mri": r"the prior was trained on mri data .*not ct",
        "output-under-a-file": r"output_dir: .*afile/out' cannot be created",
        "num-samples-zero": r"num_samples",
        "input-missing": r"input: no such file or directory: .*scan\.dcm",
    }[case]
    if case == "steps-zero":
        kw["solver_settings"] = {"steps": 0}
    elif case == "unknown-setting":
        kw["solver_settings"] = {"stepz": 3}
    elif case == "prior-of-mri":
        kw["prior"] = str(priors["mri"])
    elif case == "output-under-a-file":
        kw["output_dir"] = str(tmp_path / "afile" / "out")
    elif case == "num-samples-zero":
        kw["num_samples"] = 0
    elif case == "input-missing":
        inp = str(tmp_path / "scan.dcm")
    before = tree(tmp_path)
    spy = Spy(monkeypatch)
    with pytest.raises(ConfigError, match=pattern):
        run_reconstruction(CTAdapter(n_views=30, image_size=64), inp, **kw)
    assert spy.calls == [] and tree(tmp_path) == before


def test_load_checkpoint_names_the_file(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "model.safetensors").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match=r"p/model\.safetensors is a pickle / torch\.save"):
        load_checkpoint(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match=r"load_checkpoint: .*nope is neither a checkpoint directory"):
        load_checkpoint(tmp_path / "nope")


def test_run_batch_never_resolves_a_code_string(tmp_path):
    """A processor given by name from Python too: an import path is an unknown name, nothing is imported."""
    (tmp_path / "a.npy").write_bytes(b"")
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=r"process_item: unknown processor 'subprocess:Popen'; registered: "
                                         r"reconstruct .*never an import path"):
        run_batch([str(tmp_path / "a.npy")], str(tmp_path / "out"), "subprocess:Popen",
                  process_kwargs={"args": ["touch", str(tmp_path / "MARKER")]})
    assert tree(tmp_path) == before and not (tmp_path / "MARKER").exists()
