"""The hpo stage in a spec: where search domains may be written, and what the checker says when
they are not where an `hpo` stage can search them."""

from __future__ import annotations

import pytest

import adl
from adl.dsl.errors import AdlError
from adl.ir.domains import Domain
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


def test_an_hpo_stage_before_train_with_domains_checks():
    spec = _check(
        "hpo(trials = 8, sampler = random, pruner = asha, executor = local(jobs = 2))\n"
        "train(epochs = int(2, 6), batch_size = choice(32, 64), "
        "optimizer = adam(lr = loguniform(1e-4, 1e-1), weight_decay = uniform(0, 1e-3)))"
    )
    hpo, train = spec.pipeline
    assert hpo.as_dict()["executor"].name == "local"
    options = train.as_dict()
    assert options["epochs"] == Domain("int", 2, 6)
    assert options["optimizer"].as_dict()["lr"] == Domain("loguniform", 1e-4, 0.1)


def test_the_pipeline_string_round_trips_with_domains():
    text = (
        'hpo{trials=4,executor=ray(address="127.0.0.1:6379")},'
        "train{epochs=int(2,6),optimizer=adam(lr=loguniform(0.0001,0.1))}"
    )
    pipeline = Pipeline.parse(text)
    assert Pipeline.parse(str(pipeline)) == pipeline


def test_domains_without_an_hpo_stage_before_them_are_an_error_at_the_domain():
    message = _error("train(optimizer = adam(lr = loguniform(1e-4, 1e-1)))")
    assert "s.adl:6:29: error: search domains in 'train' need an `hpo` stage right before it" in message
    assert "^~~~" in message


def test_an_hpo_stage_with_nothing_to_search_is_an_error_at_it():
    assert "'hpo' searches the search domains of the next stage, and the stage after it, 'train', has none" in (
        _error("hpo(trials = 4)\ntrain(epochs = 3)")
    )
    assert "no stage follows it" in _error("train\nhpo(trials = 4)")


def test_domains_in_a_pass_that_cannot_search_them_are_an_error():
    message = _error("train(epochs = 2)\nhpo\namc(flops = uniform(30 %, 70 %))")
    assert "pass 'amc' has no searchable options" in message


def test_domains_outside_pass_options_are_an_error():
    with pytest.raises(AdlError) as info:
        adl.check(
            "task classify { classes = 10 }\ndata digits { split = uniform(0.5, 0.9) }\nmodel cnn\npipeline { train }",
            "d.adl",
        )
    assert "search domain 'uniform(...)' is allowed only in pass options" in str(info.value)


def test_hpo_without_a_validation_split_is_refused_before_any_work(tmp_path):
    spec = (
        HEAD.replace("validation = 20 %", "split = 0.8")
        + "pipeline {\nhpo(trials = 2)\ntrain(optimizer = adam(lr = loguniform(1e-3, 1e-1)))\n}\n"
    )
    with pytest.raises(AdlError) as info:
        adl.compile(spec, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert "hpo scores its trials on the validation split" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_hpo_before_a_distributed_train_is_refused_at_the_train_stage(tmp_path):
    spec = HEAD + (
        "pipeline {\nhpo(trials = 2)\n"
        "train(distributed = terngrad(workers = 2), optimizer = adam(lr = loguniform(1e-3, 1e-1)))\n}\n"
    )
    with pytest.raises(AdlError) as info:
        adl.compile(spec, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "<spec>:7:1: error: hpo trains each trial in one process; 'train' is distributed" in message
    assert not (tmp_path / "out").exists()


def test_hpo_before_a_distilling_train_is_refused_at_the_train_stage(tmp_path):
    spec = HEAD + (
        "pipeline {\ntrain(epochs = 1)\namc(flops = 50 %, episodes = 2, warmup = 1, finetune = 0)\nhpo(trials = 2)\n"
        "train(distill = teacher, optimizer = adam(lr = loguniform(1e-3, 1e-1)))\n}\n"
    )
    with pytest.raises(AdlError) as info:
        adl.compile(spec, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert "<spec>:9:1: error: hpo's trials train without a teacher; 'train' distills" in str(info.value)
    assert not (tmp_path / "out").exists()
