"""Fixtures shared by the pass tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """Small networks: a second torch thread only adds synchronisation, and on a busy 2-core
    machine it mostly spins."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
