import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest runs alongside other work. The thread count is
# SCIPRIOR_TEST_THREADS if set, else OMP_NUM_THREADS if set (so `OMP_NUM_THREADS=1 pytest` really runs on
# one thread: the suite must pass at any thread count), else 2.
torch.set_num_threads(int(os.environ.get("SCIPRIOR_TEST_THREADS") or os.environ.get("OMP_NUM_THREADS") or "2"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
