"""`lower`'s verification: a library must compute what its PyTorch model computes; integer
libraries may differ on a few samples by requantization rounding, never in the top-1 class."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from adl.backends.tvm.build import OutputAgreement
from adl.backends.tvm.lower_pass import LowerPass
from adl.ir.passes import PassError
from adl.models.integer import IntegerConv2d


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)


def integer_model() -> nn.Module:
    conv = nn.Conv2d(1, 4, 3, padding=1)
    codes = torch.randint(-7, 8, conv.weight.shape, dtype=torch.int32)
    return nn.Sequential(
        IntegerConv2d(conv, codes, torch.full((4,), 0.01), 0.05, 0, 8, 4), nn.Flatten(), nn.Linear(256, 10)
    )


def agreement(diffs, same) -> OutputAgreement:
    return OutputAgreement(np.asarray(diffs, np.float64), np.asarray(same, bool))


ONE_FLIP = agreement([0.0] * 199 + [1.4], [True] * 200)


def test_an_integer_library_may_differ_on_a_few_samples_whose_class_agrees():
    log = Log()
    let_through = LowerPass()._check_agreement(ONE_FLIP, integer_model(), log)
    assert let_through == {"samples": 1, "of": 200, "max_abs_diff": 1.4}
    assert "1 of 200 test samples differ" in log.lines[0]
    assert LowerPass()._check_agreement(agreement([0.0] * 200, [True] * 200), integer_model(), log) is None
    with pytest.raises(PassError, match="more than rounding_flips = 0 of the samples"):  # a spec asking for none
        LowerPass(rounding_flips=0.0)._check_agreement(ONE_FLIP, integer_model(), log)


def test_a_float_library_a_changed_class_or_too_many_samples_are_refused():
    float_model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(
        PassError, match=r"1 of 200 test samples exceed the tolerance 0.0001 \(max abs difference 1.4\)$"
    ):
        LowerPass()._check_agreement(ONE_FLIP, float_model, Log())
    with pytest.raises(PassError, match="change the top-1 class"):
        LowerPass()._check_agreement(agreement([0.0] * 199 + [1.4], [True] * 199 + [False]), integer_model(), Log())
    with pytest.raises(PassError, match="more than rounding_flips = 0.01"):
        LowerPass()._check_agreement(agreement([0.0] * 197 + [1.4] * 3, [True] * 200), integer_model(), Log())
    with pytest.raises(PassError, match="exceed"):  # NaN is never within the tolerance
        LowerPass()._check_agreement(agreement([np.nan] + [0.0] * 199, [True] * 200), float_model, Log())
