"""Small timing and memory helpers for the benchmarks: thread limits, interleaved repeats, median/IQR,
resident-set-size readings and the load average.

Nothing here imports a peer library; everything is standard library plus torch (and threadpoolctl when
installed).
"""

from __future__ import annotations

import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# Environment variables read by the thread pools of OpenMP, MKL, OpenBLAS, numexpr and numba. They only
# take effect in a process started after they are set, hence workers in fresh subprocesses.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def thread_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with every known thread-pool variable set to ``threads``."""
    env = dict(os.environ if base is None else base)
    for k in THREAD_ENV:
        env[k] = str(int(threads))
    return env


def limit_threads(threads: int) -> dict[str, object]:
    """Pin torch's intra-op pool and (with threadpoolctl) every BLAS/OpenMP pool to ``threads``.

    Returns what was found, for the report: ``{"torch": n, "threadpoolctl": [...] or "not installed"}``.
    The limit set through threadpoolctl lasts for the life of the process.
    """
    import torch

    torch.set_num_threads(int(threads))
    info: dict[str, object] = {"torch": torch.get_num_threads()}
    try:
        import threadpoolctl
    except ImportError:
        info["threadpoolctl"] = "not installed"
        return info
    global _LIMITER  # the limits hold until the limiter is restored; keep it for the process' life
    _LIMITER = threadpoolctl.threadpool_limits(limits=int(threads))
    info["threadpoolctl"] = [f"{p['internal_api']}={p['num_threads']}" for p in threadpoolctl.threadpool_info()]
    return info


_LIMITER = None


@dataclass
class Stats:
    """Summary of repeated timings, milliseconds."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(seconds: Sequence[float]) -> Stats:
    """Median and quartiles (``statistics.quantiles``, inclusive method) of timings in seconds, as ms."""
    ms = [1e3 * s for s in seconds]
    if not ms:
        raise ValueError("summarize: no timings")
    if len(ms) == 1:
        return Stats(ms[0], ms[0], ms[0], 1)
    q1, med, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return Stats(med, q1, q3, len(ms))


def time_once(fn: Callable[[], object]) -> float:
    """Wall time of one call, seconds (``perf_counter``)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Time every function ``repeats`` times, round robin (one call of each per round), after ``warmup``
    untimed calls of each. Interleaving spreads slow phases of a shared machine over all candidates
    instead of penalising whichever ran during them. Garbage is collected (untimed) before each round.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        gc.collect()
        for k, fn in fns.items():
            out[k].append(time_once(fn))
    return out


# --------------------------------------------------------------------------------------------
# Memory (Linux /proc) and load
# --------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


def rss_mib() -> float | None:
    """Current resident set size, MiB (None off Linux)."""
    v = _status_kib("VmRSS")
    return None if v is None else v / 1024


def peak_rss_mib() -> float | None:
    """RSS high-water mark since the last :func:`reset_peak_rss`, MiB (None off Linux)."""
    v = _status_kib("VmHWM")
    return None if v is None else v / 1024


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0); False if not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages, or None where unavailable."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def measure_build(build: Callable[[], object]) -> tuple[object, float, float | None, float | None]:
    """Run ``build()`` once: returns ``(result, seconds, retained_mib, peak_extra_mib)``.

    ``retained`` = RSS after minus RSS before (what the built object keeps, roughly), ``peak_extra`` =
    RSS high-water mark during the build minus RSS before (temporaries included). Both None when
    /proc is unavailable; ``peak_extra`` None when the mark cannot be reset.
    """
    gc.collect()
    before = rss_mib()
    can_peak = reset_peak_rss()
    t0 = time.perf_counter()
    obj = build()
    secs = time.perf_counter() - t0
    gc.collect()
    after = rss_mib()
    peak = peak_rss_mib() if can_peak else None
    retained = None if before is None or after is None else after - before
    peak_extra = None if before is None or peak is None else peak - before
    return obj, secs, retained, peak_extra
