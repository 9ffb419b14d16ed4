"""Stress test of the batch engine's resume (issue 15): a batch killed with SIGKILL at random moments and restarted
each time ends complete and bitwise equal to an uninterrupted run, with every item committed exactly once, a
complete summary.csv, and no temporary file or directory left anywhere in the output tree.

The items are the tiny GaussianPrior / DiffPIR problem of tests/app/batch_helpers.py, slowed down to a few hundred
ms each, most of it spent writing (batch_reliability_helpers.slow_item), so kills land while outputs are half
written too. The kill moments come from a seeded RNG: one kill in each fifth of the run (by the number of items
committed), then a random delay inside an item; every second kill waits for an output write in flight first.

- default: 20 inputs, 5 kills, one process per run (forked from a fork server that imported everything once);
- ``@pytest.mark.slow`` (``make test-slow``): 60 inputs, 10 kills, each run a fresh ``python`` process with 2 DDP
  ranks on CPU (the whole process group is killed).

"Committed exactly once" is checked from the records: before each restart the committed records are saved, and
none may change afterwards (a change would be a second commit), and the call log of each run (``name rank pid``
when an item starts) may only hold items that had not committed when the run started.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import batch_reliability_helpers as rh
import pytest

from sciprior.app.batch.records import STATE_DIR

SEED = 1515


def _committed(out: Path) -> dict[str, bytes]:
    """name -> record bytes of the items whose record says ok (the commit)."""
    items = out / STATE_DIR / "items"
    found = {}
    if items.is_dir():
        for p in items.glob("*.json"):
            if p.name.startswith(rh.TMP_PREFIX):
                continue
            data = p.read_bytes()
            if json.loads(data).get("status") == "ok":
                found[p.stem] = data
    return found


def _count_committed(out: Path) -> int:
    items = out / STATE_DIR / "items"
    try:
        return sum(1 for e in os.scandir(items) if e.name.endswith(".json") and not e.name.startswith(rh.TMP_PREFIX))
    except FileNotFoundError:
        return 0


def _writing(out: Path, stale: set[str]) -> bool:
    """An output file is being written by the engine (a temp file that a killed run did not leave behind)."""
    try:
        return any(e.name.startswith(rh.TMP_PREFIX) and e.name.endswith("_slow.bin") and e.name not in stale
                   for e in os.scandir(out))
    except FileNotFoundError:
        return False


def _alive(pid: int) -> bool:
    """The process exists and has not exited (a child of the fork server stays a zombie until it is waited for)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: signal 0 tells whether it exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _temp_entries(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(f"{rh.TMP_PREFIX}*"))


def _outputs(out: Path) -> dict[str, bytes]:
    """Every output file of the items (not the summary, not the engine's state), relative path -> bytes."""
    found = {}
    for p in out.rglob("*"):
        rel = p.relative_to(out)
        if p.is_file() and rel.parts[0] != STATE_DIR and not rel.parts[0].startswith(("summary.", rh.TMP_PREFIX)):
            found[str(rel)] = p.read_bytes()
    return found


def _calls(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def _kill_plan(n_items: int, kills: int, rng: random.Random) -> list[tuple[int, bool]]:
    """(commit count to wait for, wait for a write in flight?) per kill: one kill in each of ``kills`` equal parts
    of [0, n_items - 2] (spread over the run), every second one inside an output write."""
    edges = [round(k * (n_items - 2) / kills) for k in range(kills + 1)]
    return [(rng.randint(edges[k], max(edges[k], edges[k + 1] - 1)), k % 2 == 1) for k in range(kills)]


def _wait_for(cond, alive, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert alive(), f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _check_final(out: Path, ref: dict[str, bytes], names: list[str], history: list[dict]) -> None:
    # complete and bitwise equal to the uninterrupted run
    got = _outputs(out)
    assert sorted(got) == sorted(ref), (sorted(set(ref) - set(got)), sorted(set(got) - set(ref)))
    for rel, b in ref.items():
        assert got[rel] == b, f"{rel} differs from the uninterrupted run"
    assert not _temp_entries(out), _temp_entries(out)
    # every item committed exactly once: its record never changed after it first appeared
    final = _committed(out)
    assert sorted(final) == sorted(names)
    first_seen: dict[str, bytes] = {}
    for h in history:
        for name, rec in h["committed_after"].items():
            assert first_seen.setdefault(name, rec) == rec, f"{name} was committed a second time"
    for name, rec in final.items():
        assert first_seen.get(name, rec) == rec, f"{name} was committed again in the final run"
    # the summary lists every item once, all done (ok in the run that did them, skipped in the final one)
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert sorted(t["name"] for t in table) == sorted(names)
    done_before = set(history[-1]["committed_after"]) if history else set()
    assert {t["name"]: t["status"] for t in table} == {n: "skipped" if n in done_before else "ok" for n in names}


def _check_run(h: dict) -> None:
    """Within one killed run: nothing committed before it started was started again or re-committed."""
    again = [n for n in h["calls"] if n in h["committed_before"]]
    assert not again, f"run {h['run']}: items already committed were started again: {again}"
    for name, rec in h["committed_before"].items():
        assert h["committed_after"].get(name) == rec, f"run {h['run']}: the record of {name} changed"


def _visible_outputs_are_whole(out: Path, ref: dict[str, bytes]) -> None:
    for rel, b in _outputs(out).items():
        assert ref.get(rel) == b, f"after a kill {rel} is visible but not the whole output"



def _after_kill(k, before, out, log, in_write, ref) -> dict:
    """The record of killed run ``k``, checked: what it committed, whether it left temporaries, whole outputs."""
    h = {"run": k, "committed_before": before, "committed_after": _committed(out), "calls": _calls(log),
         "temp_left": _temp_entries(out), "in_write": in_write}
    _check_run(h)
    _visible_outputs_are_whole(out, ref)
    return h

def test_sigkill_at_five_random_moments_then_complete_and_bitwise_equal(tmp_path):
    n, kills, sleep, write_s = 20, 5, 0.05, 0.3
    inp, _ = rh.bh.make_inputs(tmp_path, n)
    pattern = str(inp / "*.npy")
    names = [f"case_{k}" for k in range(n)]
    rng = random.Random(SEED)
    plan = _kill_plan(n, kills, rng)
    out, history = tmp_path / "out", []
    with rh.Zygote(rh.env()) as z:
        ref_dir = tmp_path / "reference"
        pid = z.start(rh.run_args(pattern, ref_dir), tmp_path / "reference.log")
        assert z.wait(pid) == 0, (tmp_path / "reference.log").read_text()[-3000:]
        ref = _outputs(ref_dir)
        assert len(ref) == 3 * n  # <name>.npy, <name>_slow.bin, <name>/recon.npy

        for k, (target, in_write) in enumerate(plan):
            log = tmp_path / f"calls_{k}.txt"
            before = _committed(out)
            stale = {Path(e).name for e in _temp_entries(out)} if out.exists() else set()
            pid = z.start(rh.run_args(pattern, out, log=log, sleep=sleep, write_s=write_s), tmp_path / f"run_{k}.log")
            alive = functools.partial(_alive, pid)
            _wait_for(lambda t=target: _count_committed(out) >= t, alive, 120, f"{target} commits")
            if in_write:
                _wait_for(lambda st=stale: _writing(out, st), alive, 60, "an output write in flight")
                time.sleep(rng.uniform(0.0, 0.08))
            else:
                time.sleep(rng.uniform(0.0, sleep + write_s))
            os.kill(pid, signal.SIGKILL)
            status = z.wait(pid)
            assert status == -signal.SIGKILL, f"kill {k}: the run was not killed (exit {status}): " + \
                (tmp_path / f"run_{k}.log").read_text()[-3000:]
            history.append(_after_kill(k, before, out, log, in_write, ref))

        final_log = tmp_path / "calls_final.txt"
        pid = z.start(rh.run_args(pattern, out, log=final_log), tmp_path / "final.log")
        assert z.wait(pid) == 0, (tmp_path / "final.log").read_text()[-3000:]
    _check_run({"run": "final", "committed_before": history[-1]["committed_after"],
                "committed_after": _committed(out), "calls": _calls(final_log)})
    _check_final(out, ref, names, history)
    # the kills were spread over the run and some landed while an output was being written
    progress = [len(h["committed_after"]) for h in history]
    assert progress == sorted(progress) and progress[0] <= n // 4 + 2 and plan[-1][0] <= progress[-1] < n, progress
    assert any(any(e.endswith("_slow.bin") for e in h["temp_left"]) for h in history if h["in_write"]), \
        [h["temp_left"] for h in history]
    # an item started twice was always cut off before its commit (never redone once done)
    starts = [c for h in history for c in h["calls"]] + _calls(final_log)
    assert set(starts) == set(names)


@pytest.mark.slow
def test_sigkill_ten_times_ddp_two_processes_fresh_each_time(tmp_path):
    """60 inputs, 10 kills of the whole process group of a 2-rank DDP run (each run a fresh interpreter)."""
    n, kills, sleep, write_s = 60, 10, 0.05, 0.3
    inp, _ = rh.bh.make_inputs(tmp_path, n)
    pattern = str(inp / "*.npy")
    names = [f"case_{k}" for k in range(n)]
    rng = random.Random(SEED + 1)
    plan = _kill_plan(n, kills, rng)
    env = rh.env()

    def start(args, log_path):
        f = open(log_path, "w")  # closed by the caller once the run is over
        p = subprocess.Popen([sys.executable, str(rh.HERE), "run", *args], env=env, cwd=rh.REPO, stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True)
        return p, f

    ref_dir = tmp_path / "reference"
    p, f = start(rh.run_args(pattern, ref_dir), tmp_path / "reference.log")
    assert p.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    f.close()
    ref = _outputs(ref_dir)
    out, history = tmp_path / "out", []
    for k, (target, in_write) in enumerate(plan):
        log = tmp_path / f"calls_{k}.txt"
        before = _committed(out)
        stale = {Path(e).name for e in _temp_entries(out)} if out.exists() else set()
        p, f = start(rh.run_args(pattern, out, log=log, sleep=sleep, write_s=write_s, devices=2, strategy="ddp"),
                     tmp_path / f"run_{k}.log")
        try:
            _wait_for(lambda t=target: _count_committed(out) >= t, lambda p=p: p.poll() is None, 300,
                      f"{target} commits")
            if in_write:
                _wait_for(lambda st=stale: _writing(out, st), lambda p=p: p.poll() is None, 120,
                          "an output write in flight")
                time.sleep(rng.uniform(0.0, 0.08))
            else:
                time.sleep(rng.uniform(0.0, sleep + write_s))
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            f.close()
        assert p.returncode == -signal.SIGKILL, (tmp_path / f"run_{k}.log").read_text()[-3000:]
        history.append(_after_kill(k, before, out, log, in_write, ref))
    final_log = tmp_path / "calls_final.txt"
    p, f = start(rh.run_args(pattern, out, log=final_log, devices=2, strategy="ddp"), tmp_path / "final.log")
    assert p.wait(timeout=600) == 0, (tmp_path / "final.log").read_text()[-3000:]
    f.close()
    _check_run({"run": "final", "committed_before": history[-1]["committed_after"],
                "committed_after": _committed(out), "calls": _calls(final_log)})
    _check_final(out, ref, names, history)
    assert any(any(e.endswith("_slow.bin") for e in h["temp_left"]) for h in history if h["in_write"])
    ranks = {line.split()[1] for log in [*tmp_path.glob("calls_*.txt")] for line in log.read_text().splitlines()}
    assert ranks == {"0", "1"}  # both DDP ranks did work
