"""Fixtures of the solver tests (the problems live in ``gaussian_problems``)."""

from __future__ import annotations

import pytest
from gaussian_problems import make_gaussian_problem, make_gmm_problem


@pytest.fixture
def gaussian_problem():
    return make_gaussian_problem()


@pytest.fixture
def gmm_problem():
    return make_gmm_problem()
