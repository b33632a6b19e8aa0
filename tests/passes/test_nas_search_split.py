"""nas's search data (`search_data`): 80/20 of the training split (or of a stratified subset of
`nas { samples = N }`), unless the spec sets `data { validation = ... }`: then the training split
trains the supernet's weights and the validation split chooses the architecture."""

from __future__ import annotations

import numpy as np
import pytest

from adl.data.dataset import make_dataset
from adl.passes.nas import search_data


def rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in np.asarray(x).reshape(len(x), -1)}


def normalised(dataset, x: np.ndarray) -> np.ndarray:
    mean = np.asarray(dataset.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(dataset.std, np.float32).reshape(-1, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def indexed_dataset(y: np.ndarray):
    x = np.arange(len(y), dtype=np.float32).reshape(-1, 1, 1, 1)
    return make_dataset("indexed", x, y, x[:2], y[:2], int(y.max()) + 1, (0.0, float(len(y))), "indexed")


def indices(dataset, x: np.ndarray) -> list[int]:
    """The training-split indices of normalised images of `indexed_dataset`."""
    return np.rint(x.reshape(len(x)) * dataset.std[0] + dataset.mean[0]).astype(int).tolist()


def test_without_a_validation_split_all_training_images_split_80_20_as_before():
    dataset = indexed_dataset(np.repeat(np.arange(10), 50))
    data = search_data(dataset, None, seed=0)
    assert len(data.y_fit) == 400 and len(data.y_val) == 100
    chosen = indices(dataset, data.x_fit) + indices(dataset, data.x_val)
    assert chosen == np.random.default_rng(0).permutation(500).tolist()  # the split of earlier releases
    assert data.x_fit.dtype == np.float32 and data.y_fit.dtype == np.int32 and data.y_val.dtype == np.int32


def test_a_subset_keeps_the_class_proportions_and_depends_on_the_seed():
    y = np.concatenate([np.zeros(900, int), np.ones(100, int)])
    dataset = indexed_dataset(y)
    data = search_data(dataset, 200, seed=1)
    chosen = indices(dataset, data.x_fit) + indices(dataset, data.x_val)
    assert len(chosen) == len(set(chosen)) == 200 and len(data.y_fit) == 160
    assert np.sum(y[chosen] == 1) == 20  # 10 % of the subset, as of the data
    other = search_data(dataset, 200, seed=2)
    assert sorted(indices(dataset, other.x_fit)) != sorted(indices(dataset, data.x_fit))


SPEC = """spec v
task classify { classes = 10 }
data digits { validation = 20 %  seed = 0 }
target host { cost = roofline }
pipeline { nas { space = mobilenet(blocks = 1, kernels = [3], expand = [1], stem = 4, head = 8)  samples = SAMPLES } }
"""


def spec_with_validation(samples: int = 400):
    from adl.driver.check import load_spec

    return load_spec(SPEC.replace("SAMPLES", str(samples)))


@pytest.fixture(scope="module")
def digits_with_validation():
    from adl.driver.run import load_data

    dataset = load_data(spec_with_validation())
    assert dataset.has_validation
    return dataset


def test_the_spec_validation_split_chooses_the_architecture(digits_with_validation):
    dataset = digits_with_validation
    data = search_data(dataset, None, seed=0)
    assert rows(data.x_val) == rows(normalised(dataset, dataset.x_val)) and len(data.y_val) == len(dataset.y_val)
    assert rows(data.x_fit) == rows(normalised(dataset, dataset.x_train)) and len(data.y_fit) == len(dataset.y_train)


def test_samples_thin_the_training_and_the_validation_split_alike(digits_with_validation):
    dataset = digits_with_validation
    data = search_data(dataset, 400, seed=0)
    assert abs(len(data.y_fit) - 400) <= 10
    assert abs(len(data.y_val) - len(dataset.y_val) * 400 / len(dataset.y_train)) <= 10
    assert rows(data.x_val) <= rows(normalised(dataset, dataset.x_val))
    assert rows(data.x_fit) <= rows(normalised(dataset, dataset.x_train))


class _SearchCalled(Exception):
    """Raised by the stub search: what the pass handed it is all this test needs."""


def test_the_pass_searches_on_the_spec_validation_split(monkeypatch, tmp_path, digits_with_validation):
    pytest.importorskip("jax")
    import adl.passes.nas.search as nas_search
    from adl.driver.run import make_cost_model
    from adl.ir.module import Module
    from adl.ir.passes import PassContext
    from adl.passes.nas import NasPass

    seen = {}

    class StubSearch:
        def __init__(self, *args, **kwargs):
            pass

        def run(self, x_fit, y_fit, x_val, y_val, **kwargs):
            seen.update(x_fit=x_fit, x_val=x_val)
            raise _SearchCalled

    monkeypatch.setattr(nas_search, "Search", StubSearch)
    spec = spec_with_validation(400)
    ctx = PassContext(spec, tmp_path, cost_model=make_cost_model(spec), load_dataset=lambda: digits_with_validation)
    with pytest.raises(_SearchCalled):
        NasPass(**spec.pipeline[0].as_dict()).run(Module(spec=spec), ctx)
    dataset = digits_with_validation
    assert rows(seen["x_val"]) <= rows(normalised(dataset, dataset.x_val))
    assert rows(seen["x_fit"]) <= rows(normalised(dataset, dataset.x_train))
    assert abs(len(seen["x_fit"]) - 400) <= 10
