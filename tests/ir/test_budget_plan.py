"""Splitting the spec's latency budget: a search aims looser when compression passes follow."""

from __future__ import annotations

import pytest

from adl.driver.check import load_spec
from adl.ir.budget_plan import plan_budgets
from adl.ir.pipeline import Pipeline

SPEC = """
spec s
task classify { classes = 10 }
data digits
target host { kind = llvm  cores = 2 }
CONSTRAINTS
model cnn()
pipeline { train lower }
"""


def plan(pipeline: str, constraints: str = "constraints { latency <= 1 ms }"):
    return plan_budgets(load_spec(SPEC.replace("CONSTRAINTS", constraints)), list(Pipeline.parse(pipeline)))


def test_nas_alone_searches_to_the_whole_budget():
    (share,) = plan("nas,train,lower").shares
    assert (share.pass_name, share.metric, share.value) == ("nas", "latency", pytest.approx(1e-3))
    assert "no compression pass" in share.why


def test_compression_after_nas_loosens_its_share_by_the_expected_factors():
    (share,) = plan("nas,train,amc{flops=0.5},haq{budget=latency,fraction=0.8},lower").shares
    assert share.value == pytest.approx(1e-3 / (0.5 * 0.8))
    assert "amc{flops=0.5} x0.5" in share.why and "x0.8" in share.why


def test_passes_that_do_not_promise_latency_leave_the_share_alone():
    # haq with a size budget, amc with a parameter budget, haq on the spec's own latency budget
    (share,) = plan("nas,amc{params=0.5},haq{budget=size},haq,lower").shares
    assert share.value == pytest.approx(1e-3)


def test_no_latency_budget_no_plan_and_shares_reach_the_pass():
    assert plan("nas,amc,lower", constraints="").shares == ()
    pipeline = list(Pipeline.parse("nas,amc{latency=0.6},lower"))
    result = plan_budgets(load_spec(SPEC.replace("CONSTRAINTS", "constraints { latency < 3 ms }")), pipeline)
    assert result.for_pass(0) == {"latency": pytest.approx(5e-3)} and result.for_pass(1) == {}
    assert result.as_list()[0]["pass"] == "nas"
