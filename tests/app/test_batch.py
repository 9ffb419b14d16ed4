"""Batch engine (sciprior/app/batch/): exactly-once processing across DDP ranks, results independent of
the device count, atomic outputs and resume after SIGKILL, contained failures, input errors naming the
path, the summary, the config entry point and the example script.

The per-input work is a real tiny posterior problem (tests/app/batch_helpers.py: Gaussian prior, masked
noisy measurement, a few DiffPIR steps with an autograd data step). DDP and the killed run start
tests/app/batch_helpers.py as a subprocess (Lightning relaunches it once per extra rank).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import batch_helpers as h
import numpy as np
import pytest
import torch
from jsonargparse import ArgumentError

from sciprior.app.batch import (
    BatchConfigError,
    ItemOutput,
    ShardSampler,
    is_done,
    item_seed,
    load_process_item,
    read_record,
    resolve_inputs,
    run_batch,
    summarize,
)
from sciprior.app.batch.cli import main, parse_config
from sciprior.io.atomic import TMP_PREFIX, atomic_write

HELPER = Path(h.__file__).resolve()
REPO = HELPER.parents[2]
N = 7
TARGET = h.process_item  # the function itself (code the test runs); a config names it through an entry point


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
    """Lightning must not think it runs under SLURM / an outer DDP job (e.g. CI inside sbatch)."""
    for k in list(os.environ):
        if k.startswith("SLURM_") or k in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK",
                                           "MASTER_PORT"):
            monkeypatch.delenv(k)


@contextmanager
def _single_thread():
    """The subprocess runs use OMP_NUM_THREADS=1; in-process runs whose bytes are compared with them
    must use one thread too (BLAS reductions split by thread count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_thread():
    with _single_thread():
        yield


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def _script_args(inputs: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(HELPER), "--inputs", inputs, "--out", str(out), *extra]


def _calls(log: Path) -> list[tuple[str, int, int]]:
    if not log.exists():
        return []
    return [(n, int(r), int(p)) for n, r, p in (line.split() for line in log.read_text().splitlines())]


def _outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("case_*.npy"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_data")
    inp, truth = h.make_inputs(root, N)
    return root, str(inp / "*.npy"), truth


@pytest.fixture(scope="module")
def reference(data):
    """One in-process run on 1 device: output bytes and summary rows per item."""
    root, pattern, truth = data
    out = root / "reference"
    with _single_thread():
        summary = run_batch(pattern, out, TARGET, process_kwargs={"truth_dir": str(truth)}, progress=False)
    rows = {r["name"]: r for r in summary.rows}
    return out, {n: (out / f"{n}.npy").read_bytes() for n in rows}, rows


def test_reference_run_is_a_real_posterior_reconstruction(reference):
    out, outputs, rows = reference
    assert sorted(outputs) == [f"case_{k}" for k in range(N)]
    for r in rows.values():
        assert r["status"] == "ok", r["error"]
        assert r["metrics"]["inference_mode"] is False  # predict ran with inference_mode=False
        assert r["rank"] == 0 and r["seed"] == item_seed(r["name"], 0)
        assert r["metrics"]["rmse"] < 0.6  # prior std is 1; 80% of pixels observed with noise 0.1
    # per-item seeds: different items draw different noise (global RNG seeded per item too)
    assert len({r["metrics"]["torch_rand"] for r in rows.values()}) == N
    x = np.load(out / "case_0.npy")
    assert x.shape == h.IMAGE_SHAPE and x.dtype == np.float64
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["name"] for t in table] == sorted(rows) and {t["status"] for t in table} == {"ok"}
    assert {"rmse", "nll", "wall_time_s", "rank", "error"} <= set(table[0])


def test_ddp_two_processes_disjoint_and_bitwise_equal_to_one_process(data, reference, tmp_path):
    _, pattern, truth = data
    _, ref_outputs, ref_rows = reference
    out, log = tmp_path / "out", tmp_path / "calls.txt"
    r = subprocess.run(_script_args(pattern, out, "--devices", "2", "--strategy", "ddp", "--log", str(log)),
                       env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    calls = _calls(log)
    names = [c[0] for c in calls]
    assert sorted(names) == sorted(ref_outputs)  # every input processed exactly once
    assert {c[1] for c in calls} == {0, 1} and len({c[2] for c in calls}) == 2  # by two processes
    rank_of = {n: rk for n, rk, _ in calls}
    rows = {row["name"]: row for row in json.loads((out / "summary.json").read_text())}
    assert {n: row["status"] for n, row in rows.items()} == {n: "ok" for n in ref_outputs}
    assert {n: row["rank"] for n, row in rows.items()} == rank_of  # the summary records who did what
    for n, b in ref_outputs.items():
        assert (out / f"{n}.npy").read_bytes() == b, f"{n}: 2-process output differs from 1-process"
        assert rows[n]["seed"] == ref_rows[n]["seed"]
        assert rows[n]["metrics"]["torch_rand"] == ref_rows[n]["metrics"]["torch_rand"]
        assert rows[n]["metrics"]["inference_mode"] is False


def test_sigkill_halfway_then_restart_completes_and_skips_done(data, reference, tmp_path):
    _, pattern, _ = data
    _, ref_outputs, _ = reference
    out, log1, log2 = tmp_path / "out", tmp_path / "calls1.txt", tmp_path / "calls2.txt"
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(_script_args(pattern, out, "--sleep", "0.5", "--log", str(log1)), env=_env(),
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while len(_outputs(out)) < 3:
                assert proc.poll() is None, "the run ended before it could be killed: " + \
                    (tmp_path / "stderr.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "no outputs appeared"
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    before = _outputs(out)
    assert 3 <= len(before) < N, before
    for f in before:  # whatever is visible is complete (atomic replace)
        assert (out / f).read_bytes() == ref_outputs[f[:-4]]
    specs = resolve_inputs(pattern, out)
    done = {s.name for s in specs if is_done(s)}
    assert done and done <= {f[:-4] for f in before}
    progress = {r["name"]: r["status"] for r in summarize(pattern, out)}  # monitoring without running
    assert progress == {n: "ok" if n in done else "pending" for n in ref_outputs}
    # a temp file as left by a kill inside a write must not survive nor count as an output
    (out / f"{TMP_PREFIX}0123456789ab-case_6.npy").write_bytes(b"partial")

    summary = run_batch(pattern, out, TARGET, process_kwargs={"log": str(log2)}, progress=False)
    status = {r["name"]: r["status"] for r in summary.rows}
    assert {n for n, s in status.items() if s == "skipped"} == done
    assert {n for n, s in status.items() if s == "ok"} == set(ref_outputs) - done
    assert sorted(c[0] for c in _calls(log2)) == sorted(set(ref_outputs) - done)  # done items not redone
    assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert _outputs(out) == sorted(f"{n}.npy" for n in ref_outputs)
    for n, b in ref_outputs.items():
        assert (out / f"{n}.npy").read_bytes() == b


def test_failing_input_is_recorded_and_the_others_finish(tmp_path):
    inp, _ = h.make_inputs(tmp_path, 3)
    y = np.load(inp / "case_1.npy")
    bad = y.copy()
    bad[0, 0, 2, 3] = np.nan
    np.save(inp / "case_1.npy", bad)
    (inp / "case_9.npy").write_text("not an array")
    out = tmp_path / "out"
    s = run_batch(str(inp / "*.npy"), out, TARGET, progress=False)
    rows = {r["name"]: r for r in s.rows}
    assert rows["case_1"]["status"] == "failed" and "NaN" in rows["case_1"]["error"]
    assert rows["case_9"]["status"] == "failed" and rows["case_9"]["error"]
    assert "Traceback" in read_record(out, "case_1")["traceback"]
    assert {n: rows[n]["status"] for n in ("case_0", "case_2")} == {"case_0": "ok", "case_2": "ok"}
    assert _outputs(out) == ["case_0.npy", "case_2.npy"]
    assert s.counts == {"ok": 2, "failed": 2}
    with open(out / "summary.csv", newline="") as f:
        table = {t["name"]: t for t in csv.DictReader(f)}
    assert table["case_1"]["status"] == "failed" and "NaN" in table["case_1"]["error"]
    # fix the inputs and run again: the failed item is retried, the done ones are skipped
    np.save(inp / "case_1.npy", y)
    (inp / "case_9.npy").unlink()
    s2 = run_batch(str(inp / "*.npy"), out, TARGET, progress=False)
    assert {r["name"]: r["status"] for r in s2.rows} == {"case_0": "skipped", "case_1": "ok",
                                                          "case_2": "skipped"}


def test_output_kinds_and_write_errors(tmp_path):
    for n in ("good", "bad_metric", "bad_writer", "not_output", "summary"):
        (tmp_path / f"{n}.in").write_text(n)

    def proc(spec):
        if spec.name == "bad_metric":
            return ItemOutput(arrays={"": np.zeros(2)}, metrics={"m": np.zeros(3)})
        if spec.name == "bad_writer":
            (Path(spec.scratch_dir) / "partial.txt").write_text("x")
            return ItemOutput(arrays={"_a": np.ones(2)}, files={".dat": lambda p: None})
        if spec.name == "not_output":
            return {"x": 1}
        if spec.name == "summary":  # its output would replace the batch's summary.csv
            return ItemOutput(arrays={"": np.zeros(2)}, files={".csv": "a,b\n"})
        (Path(spec.scratch_dir) / "sub").mkdir()  # a runner that writes a directory of files
        (Path(spec.scratch_dir) / "sub" / "recon.txt").write_text(f"run {len(calls)}")
        calls.append(spec.name)
        return ItemOutput(arrays={"_mean": torch.arange(4.0), "_std": np.ones(2)},
                          files={"_report.txt": "hi\n", ".bin": b"\x00\x01",
                                 ".nii.gz": lambda p: p.write_bytes(b"g")},
                          metrics={"t": torch.tensor(2.5), "n": np.int64(3), "s": "x", "b": True})

    out, calls = tmp_path / "out", []
    s = run_batch(str(tmp_path / "*.in"), out, proc, progress=False)
    rows = {r["name"]: r for r in s.rows}
    assert rows["good"]["status"] == "ok"
    assert sorted(rows["good"]["outputs"]) == ["good", "good.bin", "good.nii.gz", "good_mean.npy",
                                               "good_report.txt", "good_std.npy"]
    assert (out / "good" / "sub" / "recon.txt").read_text() == "run 0"
    assert np.array_equal(np.load(out / "good_mean.npy"), np.arange(4.0, dtype=np.float32))
    assert (out / "good_report.txt").read_text() == "hi\n" and (out / "good.bin").read_bytes() == b"\x00\x01"
    assert rows["good"]["metrics"] == {"t": 2.5, "n": 3, "s": "x", "b": True}
    assert "metric 'm'" in rows["bad_metric"]["error"]
    assert "did not create" in rows["bad_writer"]["error"]
    assert "expected sciprior.app.batch.ItemOutput" in rows["not_output"]["error"]
    assert "would replace the batch's own summary.csv" in rows["summary"]["error"]
    assert not (out / "summary.npy").exists() and (out / "summary.csv").read_text().startswith("index,name,")
    assert not list(out.glob("bad_*")) and not list(out.glob("not_output*"))  # no half set of outputs
    assert not list(out.glob(f"{TMP_PREFIX}*"))  # scratch directories removed
    s = run_batch(str(tmp_path / "good.in"), out, proc, overwrite=True, progress=False)
    assert s.counts == {"ok": 1} and (out / "good" / "sub" / "recon.txt").read_text() == "run 1"
    assert sorted(p.name for p in (out / "good").rglob("*")) == ["recon.txt", "sub"]
    assert not list(out.glob(f"{TMP_PREFIX}*"))


def test_input_errors_name_the_path(tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        run_batch(missing, out, TARGET)
    pattern = str(tmp_path / "empty" / "*.npy")
    with pytest.raises(FileNotFoundError, match=re.escape(pattern)):
        run_batch(pattern, out, TARGET)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "gone.npy"))):
        run_batch([str(tmp_path / "gone.npy")], out, TARGET)
    assert not out.exists()  # failed before any work
    (tmp_path / "x.npy").write_bytes(b"")
    lst = tmp_path / "list.txt"
    lst.write_text("# inputs\nx.npy\n\nmissing.npy\n")
    with pytest.raises(FileNotFoundError, match=r"list\.txt lists 1 missing input\(s\): line 4: \S*missing"):
        resolve_inputs(lst, out)
    bad_csv = tmp_path / "m.csv"
    bad_csv.write_text("filename,name\nx.npy,a\n")
    with pytest.raises(ValueError, match=r"m\.csv needs a column.*'filename'"):
        resolve_inputs(bad_csv, out)
    with pytest.raises(BatchConfigError, match=r"process_item: unknown processor 'no_such_module:f'; registered: "):
        run_batch(str(tmp_path / "x.npy"), out, "no_such_module:f")
    assert not out.exists()  # failed before any work
    with pytest.raises(BatchConfigError, match="never an import path"):
        load_process_item("batch_helpers:nothing_here")


def test_manifest_names_params_and_clashing_file_names(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "scan.nii.gz").write_bytes(b"")
    out = tmp_path / "out"
    specs = resolve_inputs(str(tmp_path / "*" / "scan.nii.gz"), out)
    assert [s.name for s in specs] == ["a__scan", "b__scan"]
    man = tmp_path / "m.csv"
    man.write_text("path,name,accel\nb/scan.nii.gz,first,4\na/scan.nii.gz,,8\n")
    specs = resolve_inputs(man, out, base_seed=5)
    assert [s.name for s in specs] == ["first", "a__scan"]  # manifest order, explicit or default names
    assert [s.path for s in specs] == [str(tmp_path / d / "scan.nii.gz") for d in ("b", "a")]
    assert [s.params for s in specs] == [{"accel": "4"}, {"accel": "8"}]
    assert [s.seed for s in specs] == [item_seed("first", 5), item_seed("a__scan", 5)]
    assert specs[0].output_dir == str(out.resolve())
    man.write_text("path,name\na/scan.nii.gz,x\nb/scan.nii.gz,x\n")
    with pytest.raises(ValueError, match="not unique"):
        resolve_inputs(man, out)


def test_item_seed_and_shard_sampler():
    assert item_seed("case_1") == item_seed("case_1") != item_seed("case_2")
    assert item_seed("case_1", 3) == (item_seed("case_1") + 3) % 2**63
    assert all(0 <= item_seed(f"x{i}", 2**62) < 2**63 for i in range(50))
    for n in range(12):
        for w in range(1, 5):
            shards = [list(ShardSampler(n, r, w)) for r in range(w)]
            flat = [i for s in shards for i in s]
            assert sorted(flat) == list(range(n))  # each index once: no padding, no duplicates
            assert [len(s) for s in shards] == [len(ShardSampler(n, r, w)) for r in range(w)]
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="rank 2"):
        ShardSampler(5, 2, 2)


def test_atomic_write_leaves_old_file_or_new_file(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write(p, b"old")

    def broken(path):
        path.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, broken)
    assert p.read_bytes() == b"old" and sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]
    with pytest.raises(FileNotFoundError, match="did not create"):  # np.save appends .npy to f.bin
        atomic_write(p, lambda path: np.save(path, np.arange(3)))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]
    q = tmp_path / "g.npy"
    atomic_write(q, lambda path: np.save(path, np.arange(3)))  # the writer gets a path with the same suffix
    assert np.array_equal(np.load(q), np.arange(3)) and len(list(tmp_path.iterdir())) == 2


def test_rerun_skips_everything_and_overwrite_reproduces(data, reference, tmp_path):
    _, pattern, _ = data
    out, ref_outputs, _ = reference
    log = tmp_path / "calls.txt"
    s = run_batch(pattern, out, TARGET, process_kwargs={"log": str(log)}, progress=False)
    assert s.counts == {"skipped": N} and _calls(log) == []
    assert all(r["metrics"]["nll"] > 0 for r in s.rows)  # skipped rows keep the earlier metrics
    s = run_batch(pattern, out, TARGET, process_kwargs={"log": str(log)}, overwrite=True, progress=False)
    assert s.counts == {"ok": N} and len(_calls(log)) == N
    for n, b in ref_outputs.items():
        assert (out / f"{n}.npy").read_bytes() == b


@pytest.fixture
def site(tmp_path):
    """An installed distribution declaring two processors in the entry-point group sciprior.processors: the test
    problem, and one whose module would leave a marker file if it were ever imported."""
    site = tmp_path / "site"
    (site / "marker_processor.py").parent.mkdir()
    marker = tmp_path / "imported.txt"
    (site / "marker_processor.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f(spec): pass\n")
    h.install_processor(site, {"tiny_diffpir": "batch_helpers:process_item", "marker": "marker_processor:f",
                               "broken": "no_such_module_here:f"})
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    yield site, marker
    sys.path.remove(str(site))
    sys.modules.pop("marker_processor", None)


def test_processor_registry_names_and_loads_only_what_is_asked_for(site, tmp_path):
    from sciprior.app.batch import registry

    _, marker = site
    assert registry.names() == ["broken", "marker", "reconstruct", "tiny_diffpir"]
    assert registry.get("tiny_diffpir") is h.process_item
    assert registry.get("reconstruct").__name__ == "ReconstructItem"
    assert not marker.exists()  # listing and loading other names imported nothing of it
    with pytest.raises(BatchConfigError, match=r"process_item: processor 'broken' \(entry point "
                                               r"'no_such_module_here:f'.*cannot be loaded: ModuleNotFoundError"):
        registry.get("broken")
    for bad in ("marker_processor:f", "batch_helpers:process_item", "tests.app.batch_helpers.process_item", ""):
        with pytest.raises(BatchConfigError, match=r"process_item: .*reconstruct, tiny_diffpir"):
            registry.get(bad)
    assert not marker.exists()
    assert registry.get("marker") is sys.modules["marker_processor"].f and marker.exists()


def test_process_kwargs_are_checked_against_the_signature_before_anything_runs(data, tmp_path):
    _, pattern, _ = data
    out, log = tmp_path / "out", tmp_path / "calls.txt"
    with pytest.raises(BatchConfigError, match=r"process_kwargs\.stepz: unknown setting of processor "
                                               r"'process_item'; it accepts: steps, log, sleep, truth_dir"):
        run_batch(pattern, out, TARGET, process_kwargs={"stepz": 3, "log": str(log)})
    with pytest.raises(BatchConfigError, match=r"process_kwargs\.config: processor 'reconstruct' needs this"):
        run_batch(pattern, out, "reconstruct")
    with pytest.raises(BatchConfigError, match=r"process_kwargs\.overrides\.input: set for every item"):
        run_batch(pattern, out, "reconstruct", process_kwargs={"config": str(h.write_ct_config(tmp_path / "c.yaml")),
                                                               "overrides": {"input": "x"}})
    assert not out.exists() and not log.exists()


def _ct_batch(tmp_path: Path, order: list[Path], out: Path) -> dict[str, str]:
    cfg = h.write_ct_config(tmp_path / "recon.yaml")
    summary = run_batch([str(p) for p in order], out, "reconstruct", process_kwargs={"config": str(cfg)},
                        progress=False)
    with open(out / "summary.csv", newline="") as f:
        table = {t["name"]: t["status"] for t in csv.DictReader(f)}
    assert table == {r["name"]: r["status"] for r in summary.rows}
    return table


def test_a_bad_input_first_or_last_gives_the_same_summary(tmp_path):
    """Issue 15: an unreadable FIRST input aborted the whole batch (config validated against it), while the same
    file elsewhere was recorded failed. The config is now validated against the inputs in order until one
    validates, so the order never matters."""
    good = h.make_ct_inputs(tmp_path / "in", 3)
    bad = tmp_path / "in" / "ct_bad.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    first = _ct_batch(tmp_path, [bad, *good], tmp_path / "out_first")
    last = _ct_batch(tmp_path, [*good, bad], tmp_path / "out_last")
    assert first == last == {"ct_bad": "failed", "ct_0": "ok", "ct_1": "ok", "ct_2": "ok"}
    rec = read_record(tmp_path / "out_first", "ct_bad")
    assert "ConfigError" in rec["error"] and str(bad) in rec["error"]
    for out in ("out_first", "out_last"):
        assert "reconstruction.nii.gz" in {p.name for p in (tmp_path / out / "ct_0").iterdir()}
    # every input bad: the batch still runs and records each one failed, with its own message
    bad2 = tmp_path / "in" / "ct_bad2.nii.gz"
    bad2.write_bytes(b"\x00" * 10)
    allbad = _ct_batch(tmp_path, [bad, bad2], tmp_path / "out_bad")
    assert allbad == {"ct_bad": "failed", "ct_bad2": "failed"}
    assert str(bad2) in read_record(tmp_path / "out_bad", "ct_bad2")["error"]


def test_a_config_error_stops_the_batch_before_any_compute_whatever_the_order(tmp_path):
    good = h.make_ct_inputs(tmp_path / "in", 2)
    bad = tmp_path / "in" / "ct_bad.nii.gz"
    bad.write_bytes(b"not nifti")
    cfg = h.write_ct_config(tmp_path / "recon.yaml", n_views=0)
    for order in ([bad, *good], [*good, bad]):
        with pytest.raises(BatchConfigError, match=rf"process_kwargs\.config '{re.escape(str(cfg))}': "
                                                   r"modality\.n_views\b.*>= 1"):
            run_batch([str(p) for p in order], tmp_path / "out", "reconstruct", process_kwargs={"config": str(cfg)})
        assert not (tmp_path / "out").exists()


def test_config_entry_point(data, reference, site, tmp_path):
    _, pattern, _ = data
    _, ref_outputs, _ = reference
    cfg = tmp_path / "batch.yaml"
    out = tmp_path / "out"
    cfg.write_text(f"inputs: '{pattern}'\noutput_dir: {out}\nprocess_item: tiny_diffpir\n"
                   "process_kwargs: {steps: 6}\ndevices: 1\naccelerator: cpu\n")
    c = parse_config([str(cfg), "--base_seed", "4"])
    assert (c.inputs, c.output_dir, c.process_kwargs, c.base_seed) == (pattern, str(out), {"steps": 6}, 4)
    with pytest.raises(ArgumentError, match="devicez"):
        parse_config([str(cfg), "--devicez", "2"], exit_on_error=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text() + "devicez: 2\n")
    with pytest.raises(ArgumentError, match="devicez"):
        parse_config([str(bad)], exit_on_error=False)
    assert main([str(cfg), "--progress", "false"]) == 0
    for n, b in ref_outputs.items():
        assert (out / f"{n}.npy").read_bytes() == b


def test_example_script_runs_and_resumes(tmp_path):
    spec = importlib.util.spec_from_file_location("batch_example", REPO / "scripts" / "batch_example.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    argv = ["--work", str(tmp_path), "--num-inputs", "2", "--solver", "exact", "--num-samples", "3",
            "--no-progress"]
    assert ex.main(argv) == 0
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["metrics"]["psnr"] > 15 for r in rows)
    assert sorted(p.name for p in (tmp_path / "out").glob("img_000*")) == [
        "img_000_mean.npy", "img_000_report.txt", "img_000_std.npy"]
    assert ex.main(argv) == 0
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
