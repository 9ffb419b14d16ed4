"""Helpers of tests/reliability/test_batch_kill.py and test_batch_bad_inputs.py (a uniquely named module, never
imported from a conftest).

- :func:`slow_item`: the tiny GaussianPrior / DiffPIR problem of tests/app/batch_helpers.py as a processor whose
  item takes a few hundred ms and spends most of it WRITING: a file into its scratch directory (committed by the
  engine as ``<out>/<name>/``) and an output ``<name>_slow.bin`` whose writer the engine runs inside its atomic
  write, in chunks, so a kill can land while an item's outputs are half written.
- a script (``python batch_reliability_helpers.py MODE ...``):

  - ``run --inputs GLOB --out DIR [--log F --sleep S --write-s S --devices N --strategy ddp]``: one batch run in
    a fresh process (DDP relaunches this script once per extra rank);
  - ``zygote``: a fork server. It imports everything once, then forks one child per ``run`` request read from
    stdin (a JSON line) and reports the child's pid; the test SIGKILLs that child. Each child is a separate
    process that runs the batch from scratch exactly as ``run`` does (the parent imported modules and ran
    nothing, so the child starts with no state but the imports); it only saves the ~8 s of importing torch,
    Lightning and MONAI per restart, which keeps 5 kills and 6 restarts well under a minute;
  - ``cli CWD ARGV.json``: ``sciprior.app.batch.cli.main(argv)`` for each command line of the JSON list in turn,
    with ``CWD`` as the working directory and first on ``sys.path`` (as ``python -m sciprior.app.batch`` has it),
    printing one JSON line per command line (exit code, stderr, stdout, the modules it imported).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

_APP_TESTS = Path(__file__).resolve().parents[1] / "app"
if str(_APP_TESTS) not in sys.path:
    sys.path.insert(0, str(_APP_TESTS))

import batch_helpers as bh  # noqa: E402  (tests/app/batch_helpers.py: the tiny posterior problem)
import numpy as np  # noqa: E402

from sciprior.app.batch import ItemOutput, ItemSpec  # noqa: E402

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
TMP_PREFIX = ".tmp-"


def _append(path: str, line: str) -> None:
    """One ``write`` with O_APPEND: lines of concurrent processes never interleave, and a kill loses none that
    was written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _write_slowly(path, data: bytes, seconds: float, chunks: int = 8) -> None:
    with open(path, "wb") as f:
        for k in range(chunks):
            f.write(data[k * len(data) // chunks:(k + 1) * len(data) // chunks])
            f.flush()
            if seconds:
                time.sleep(seconds / chunks)


def slow_item(spec: ItemSpec, *, log: str | None = None, sleep: float = 0.0, write_s: float = 0.0,
              steps: int = 6) -> ItemOutput:
    """The test problem (DiffPIR on a Gaussian prior), taking ``sleep + write_s`` seconds: ``write_s / 3`` writing
    ``recon.npy`` into the scratch directory, ``2 write_s / 3`` in the engine's atomic write of ``<name>_slow.bin``.
    Outputs do not depend on the timings. ``log`` gets ``name rank pid`` when the item starts."""
    if log:
        _append(log, f"{spec.name} {spec.rank} {os.getpid()}\n")
    if sleep:
        time.sleep(sleep)
    out = bh.process_item(spec, steps=steps)
    x = np.asarray(out.arrays[""])
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    _write_slowly(Path(spec.scratch_dir) / "recon.npy", buf.getvalue(), write_s / 3)
    blob = x.tobytes() * 16
    return ItemOutput(arrays={"": x}, files={"_slow.bin": functools.partial(_write_slowly, data=blob,
                                                                           seconds=2 * write_s / 3)},
                      metrics=dict(out.metrics))


def run_args(inputs: str, out: Path, *, log: Path | None = None, sleep: float = 0.0, write_s: float = 0.0,
             devices: int = 1, strategy: str = "auto") -> list[str]:
    args = ["--inputs", inputs, "--out", str(out), "--sleep", str(sleep), "--write-s", str(write_s),
            "--devices", str(devices), "--strategy", strategy]
    return args + (["--log", str(log)] if log else [])


def _run(argv: list[str]) -> int:
    from sciprior.app.batch import run_batch

    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--log", default=None)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--write-s", type=float, default=0.0)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="auto")
    a = ap.parse_args(argv)
    summary = run_batch(a.inputs, a.out, slow_item,
                        process_kwargs={"log": a.log, "sleep": a.sleep, "write_s": a.write_s},
                        devices=a.devices, accelerator="cpu", strategy=a.strategy, progress=False, num_threads=1)
    print(f"rank {os.environ.get('LOCAL_RANK', '0')}: {summary}", flush=True)
    return 0 if not summary.names("failed") and not summary.names("missing") else 1


def _zygote() -> int:
    import lightning.pytorch  # noqa: F401  (imported once here, inherited by every child)
    import torch

    import sciprior.app.batch  # noqa: F401

    torch.set_num_threads(1)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "run":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: one batch run, then _exit (no cleanup of the parent's state)
                rc = 3
                try:
                    fd = os.open(cmd["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    rc = _run(cmd["args"])
                except BaseException:  # noqa: B036 - report anything, then _exit
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(rc)
            print(json.dumps({"pid": pid}), flush=True)
        elif cmd["op"] == "wait":
            _, status = os.waitpid(cmd["pid"], 0)
            print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
        elif cmd["op"] == "quit":
            return 0
    return 0


class Zygote:
    """The fork server, seen from the test: ``start(args) -> pid``, ``wait(pid) -> exit code`` (-9: SIGKILL)."""

    def __init__(self, env: dict[str, str], timeout: float = 120.0):
        self.proc = subprocess.Popen([sys.executable, str(HERE), "zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.timeout = timeout
        ready = self._read()
        assert "ready" in ready, ready

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server ended (exit code {self.proc.poll()})")
        return json.loads(line)

    def _send(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, args: list[str], stderr: Path) -> int:
        return self._send({"op": "run", "args": args, "stderr": str(stderr)})["pid"]

    def wait(self, pid: int) -> int:
        return self._send({"op": "wait", "pid": pid})["status"]

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cli(cwd: str, argv_file: str) -> int:
    """Each command line of the JSON list in ``argv_file`` through the batch CLI, in ``cwd`` with ``cwd`` first on
    sys.path; one JSON line per command line (exit code, stderr, stdout, modules imported by it)."""
    os.chdir(cwd)
    sys.path.insert(0, cwd)
    from sciprior.app.batch.cli import main

    real_stdout = sys.stdout
    for argv in json.loads(Path(argv_file).read_text()):
        before = set(sys.modules)
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code
            except BaseException as e:  # noqa: B036 - a traceback is a finding: report it
                rc = f"raised {type(e).__name__}: {e}"
                traceback.print_exc()
        real_stdout.write(json.dumps({"argv": argv, "rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue(),
                                      "imported": sorted(set(sys.modules) - before)}) + "\n")
        real_stdout.flush()
    return 0


def env() -> dict[str, str]:
    """The environment of the subprocesses: one thread (outputs are compared bitwise), no cluster variables."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in (
        "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK", "MASTER_PORT", "MASTER_ADDR")}
    e.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return e


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    mode, rest = argv[0], argv[1:]
    if mode == "run":
        return _run(rest)
    if mode == "zygote":
        return _zygote()
    if mode == "cli":
        return _cli(rest[0], rest[1])
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main())
