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


@pytest.fixture(scope="session")
def trained_digits_cnn():
    """(a small CNN trained 8 epochs on digits with Adam, in eval mode; the digits dataset)."""
    import torch

    from adl.data import load_dataset
    from adl.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    dataset = load_dataset("digits")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(
            "cnn",
            {"channels": [8, 16], "hidden": 32},
            input_shape=dataset.input_shape,
            classes=10,
            mean=dataset.mean,
            std=dataset.std,
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        x, y = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)
        model.train()
        for _ in range(8):
            for start in range(0, len(x), 64):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x[start : start + 64]), y[start : start + 64]).backward()
                optimizer.step()
    torch.set_num_threads(threads)
    return model.eval(), dataset
