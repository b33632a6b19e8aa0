"""Property: `adl check` on any text exits 0 or 2 with positioned, one-screen errors, never crashes or hangs.

The texts come from tests/dsl/fuzzing.py: specs built from the grammar with the real vocabulary
(mostly valid values, some hostile), and the example specs damaged. A few hundred examples,
derandomized so `make test` is repeatable; bench/fuzz.py runs ten thousand with fresh seeds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings

_spec = importlib.util.spec_from_file_location("adl_fuzzing", Path(__file__).with_name("fuzzing.py"))
fuzzing = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("adl_fuzzing", fuzzing)
_spec.loader.exec_module(fuzzing)

HANG_S = 5.0  # a guard against hangs, not a speed test: a small spec checks in milliseconds
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _assert_handled(data: bytes, folder: Path) -> None:
    path = folder / "fuzz.adl"
    path.write_bytes(data)
    outcome = fuzzing.check_file(path)
    assert outcome.handled, f"{outcome.kind}: {outcome.detail}"
    assert outcome.seconds < HANG_S, f"checking took {outcome.seconds:.1f} s"


@FUZZ
@given(text=fuzzing.grammar_specs())
def test_specs_from_the_grammar_are_checked_or_rejected_with_a_position(text, tmp_path_factory):
    _assert_handled(text.encode("utf-8"), tmp_path_factory.getbasetemp())


@FUZZ
@given(data=fuzzing.spec_files(fuzzing.mutated_specs()))
def test_damaged_specs_and_bytes_are_rejected_with_a_position(data, tmp_path_factory):
    _assert_handled(data, tmp_path_factory.getbasetemp())


def test_the_judge_flags_what_breaks_the_contract():
    judge = fuzzing.judge_check
    assert judge("s.adl", 0, "s.adl: ok: spec 's', ...\n", "").kind == "ok"
    assert judge("s.adl", 2, "", "s.adl:1:2: error: x\n   1 | y\n     | ^\n").kind == "spec error"
    assert judge("s.adl", 2, "", "s.adl: error: missing 'task' block\n  note: e.g.\n").kind == "spec error"
    assert judge("s.adl", 3, "", "internal error: KeyError: 'x'\n").kind == "internal error"
    assert judge("s.adl", 2, "", "error: something\n").kind == "no position"
    assert judge("s.adl", 2, "", "s.adl:1:2: error: x\n" * 50).kind == "not one screen"
    assert judge("s.adl", None, "", "", "RecursionError: maximum recursion depth").kind == "exception"
    assert judge("s.adl", 1, "", "").kind == "bad exit"
