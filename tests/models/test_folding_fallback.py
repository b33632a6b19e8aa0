"""BatchNorm that cannot be folded is said, not silently lowered slower."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adl.models.folding import fold_batchnorm_or_explain


class Untraceable(nn.Module):
    """torch.fx cannot trace `range(x.shape[1])` (a Proxy is no int); torch.export can."""

    def __init__(self, batchnorm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if batchnorm else nn.Identity()

    def forward(self, x):
        y = self.bn(self.conv(x))
        for _ in range(x.shape[1]):
            y = y * 1.0
        return y.flatten(1)


def test_a_model_fx_cannot_trace_keeps_its_batchnorm_and_says_why():
    model = Untraceable(batchnorm=True)
    same, note = fold_batchnorm_or_explain(model)
    assert same is model
    assert note == (
        "BatchNorm folding failed (TypeError: 'Proxy' object cannot be interpreted as an integer); "
        "lowering with BatchNorm unfolded: slower"
    )


def test_nothing_is_said_when_there_is_no_batchnorm_to_fold():
    model = Untraceable(batchnorm=False)
    assert fold_batchnorm_or_explain(model) == (model, None)


def test_a_traceable_model_is_folded():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
    folded, note = fold_batchnorm_or_explain(model)
    assert note is None and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_build_library_records_the_note(tmp_path):
    import numpy as np

    from adl.backends.tvm.build import build_library

    info = build_library(
        Untraceable(batchnorm=True), np.zeros((1, 1, 8, 8), np.float32), {"kind": "llvm"}, tmp_path / "model.so"
    )
    assert info.notes == (
        "BatchNorm folding failed (TypeError: 'Proxy' object cannot be interpreted as an "
        "integer); lowering with BatchNorm unfolded: slower",
    )
