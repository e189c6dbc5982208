"""Test helpers for torch models."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run faster on one thread, and tests do not fight over the two cores.
    Import it into a conftest.py to apply it to that folder's tests."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
