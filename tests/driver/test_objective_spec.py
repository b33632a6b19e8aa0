"""`train { regularizer = ... distill = ... }`, the compression passes' `distill` and the `shrink`
stage in a spec: what checks, and the caret errors for what cannot run."""

from __future__ import annotations

import pytest

import adl
from adl.dsl.errors import AdlError
from adl.ir.pipeline import Pipeline

HEAD = """spec s
task classify { classes = 10 }
data digits { validation = 20 % }
model cnn(channels = [4, 8], hidden = 16)
"""


def _check(pipeline: str):
    return adl.check(HEAD + f"pipeline {{\n{pipeline}\n}}\n", "s.adl")


def _error(pipeline: str) -> str:
    with pytest.raises(AdlError) as info:
        _check(pipeline)
    return str(info.value)


def test_every_new_option_checks_and_round_trips():
    spec = _check(
        "train(epochs = 2, optimizer = sgd(lr = 0.05), regularizer = ssl(filters = 0.1, channels = 0.02))\n"
        "shrink(threshold = 0.001, multiple = 8, finetune = 1, distill = teacher(temperature = 2))\n"
        "amc(flops = 50 %, finetune = 1, distill = teacher(weight = 90 %))\n"
        "haq(finetune = 1, distill = teacher)\n"
        "train(epochs = 1, distill = teacher(temperature = 4, weight = 0.5))"
    )
    train, shrink, amc, haq, again = spec.pipeline
    assert train.as_dict()["regularizer"].as_dict() == {"filters": 0.1, "channels": 0.02, "step": "proximal"}
    assert shrink.as_dict()["distill"].as_dict() == {"temperature": 2.0, "weight": 0.7}
    assert amc.as_dict()["distill"].as_dict()["weight"] == pytest.approx(0.9)
    assert haq.as_dict()["distill"].name == "teacher"
    text = (
        "train{regularizer=ssl(filters=0.1,step=subgradient)},shrink{finetune=2,distill=teacher(temperature=3.0)},"
        "train{distill=teacher(weight=0.5)}"
    )
    assert Pipeline.parse(str(Pipeline.parse(text))) == Pipeline.parse(text)


def test_distillation_in_train_needs_a_compression_stage_before_it():
    message = _error("train(epochs = 2, distill = teacher(temperature = 4))")
    assert "s.adl:6:29: error: 'distill' of pass 'train' needs compressed, which no earlier step provides" in message
    assert "^~~~" in message and "the network before `amc`, `haq` or `shrink`" in message


def test_transfer_regularizers_need_a_trained_network():
    message = _error("train(regularizer = delta(alpha = 0.1))")
    assert "s.adl:6:21: error: 'regularizer' of pass 'train' needs trained" in message
    assert "pulls the network toward its starting weights" in message
    spec = _check("train(epochs = 2)\ntrain(regularizer = l2sp(alpha = 0.1, beta = 0.01))")
    assert spec.pipeline[1].as_dict()["regularizer"].name == "l2sp"


@pytest.mark.parametrize(
    "stage, where, says",
    [
        ("train(regularizer = ssl(filter = 0.1))", "6:25", "filter"),
        ("train(regularizer = ssl(filters = -1))", "6:35", "filters"),
        ("train(regularizer = ssl(step = adam))", "6:32", "adam"),
        ("train(regularizer = lasso(0.1))", "6:21", "lasso"),
        ("train(epochs = 2)\namc(distill = teacher(weight = 150 %))", "7:32", "weight"),
        ("train(epochs = 2)\nshrink(distill = student)", "7:18", "student"),
        ("train(epochs = 2)\nshrink(threshold = 2)", "7:20", "threshold"),
        ("shrink", "6:1", "needs trained"),
    ],
)
def test_bad_values_are_errors_at_the_value(stage, where, says):
    message = _error(stage)
    assert f"s.adl:{where}: error:" in message and says in message
    assert "^" in message
