"""How much memory a run may ask for: refuse, before reading or allocating, what this machine cannot hold.

A file header may declare a shape that needs far more memory than the machine has (an HDF5 dataset of tens of
GiB, an ``image_size`` whose CT system matrix alone is larger than RAM). Reading it would swap, be killed by the
OOM killer, or fail deep inside numpy; :func:`check_allocation` turns that into an error naming the file or
config key and the sizes, before anything is read.
"""

from __future__ import annotations

import os

from sciprior.io.paths import InputError

#: the fraction of physical memory one allocation may use
MEMORY_FRACTION = 0.75
#: environment variable that sets the limit in bytes instead (e.g. in a batch job with a memory quota)
LIMIT_ENV = "SCIPRIOR_MEMORY_LIMIT"


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
        return None


def memory_limit() -> int | None:
    """Bytes one allocation may take: ``$SCIPRIOR_MEMORY_LIMIT`` if set, else 75 % of physical memory."""
    env = os.environ.get(LIMIT_ENV)
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise InputError(f"{LIMIT_ENV}={env!r} is not a number of bytes") from None
    total = physical_memory()
    return None if total is None else int(MEMORY_FRACTION * total)


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def check_allocation(nbytes: int, what: str, key: str) -> None:
    """Refuse ``nbytes`` for ``what`` (e.g. "the k-space of 'x.h5' (1000, 16, 640, 368) complex64") when it exceeds
    :func:`memory_limit`; the message names ``key`` and the sizes."""
    limit = memory_limit()
    if limit is not None and nbytes > limit:
        raise InputError(f"{key}: {what} needs {gib(nbytes)} of memory, more than this run may use "
                         f"({gib(limit)}; {LIMIT_ENV} sets it)")


__all__ = ["LIMIT_ENV", "MEMORY_FRACTION", "check_allocation", "gib", "memory_limit", "physical_memory"]
