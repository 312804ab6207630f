"""Fixtures shared by every test (helpers live in tests/helpers.py)."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def generator(request):
    """A generator seeded per test (from the test's name), so failures reproduce."""
    seed = int(os.environ.get("GFK_TEST_SEED", "0")) + sum(map(ord, request.node.name))
    return torch.Generator().manual_seed(seed)

