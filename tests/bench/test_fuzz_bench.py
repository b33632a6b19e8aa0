"""bench/fuzz.py imports (it loads the suite's own spec strategies from tests/dsl/fuzzing.py) and
its goals can miss."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("hypothesis")

import fuzz  # bench/fuzz.py (tests/bench/conftest.py puts bench/ on the path)


def test_the_bench_uses_the_suites_fuzzing_strategies():
    assert fuzz.fuzzing.__file__.endswith("tests/dsl/fuzzing.py")


def test_a_mishandled_case_or_too_few_specs_misses_its_goal():
    sections = {section.name: {"mishandled": 0} for section in fuzz.SECTIONS}
    sections["check"] = {"mishandled": 1, "cases": 10_000}
    goals = fuzz.goals(sections, argparse.Namespace(quick=False))
    check_goal = next(section.goal for section in fuzz.SECTIONS if section.name == "check")
    assert goals[check_goal] == {"value": 1, "target": 0, "met": False}
    assert goals["check: specs fuzzed"]["met"] is True
    sections["check"] = {"mishandled": 0, "cases": 9_999}
    assert fuzz.goals(sections, argparse.Namespace(quick=False))["check: specs fuzzed"]["met"] is False
