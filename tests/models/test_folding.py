from __future__ import annotations

import torch
from torch import nn

from adl.models import build_model
from adl.models.folding import fold_batchnorm
from adl.models.zoo import RESNET18_CIFAR


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, as after training."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_folding_preserves_outputs_on_mobilenet_and_resnet():
    torch.manual_seed(0)
    for family, options, shape in [
        ("mobilenet", {}, (1, 8, 8)),
        ("resnet", {"blocks": (1, 1), "widths": (8, 16)}, (3, 16, 16)),
    ]:
        model = build_model(
            family, options, input_shape=shape, classes=10, mean=(0.5,) * shape[0], std=(2.0,) * shape[0]
        ).eval()
        _randomise_bn(model)
        folded = fold_batchnorm(model)
        x = torch.randn(4, *shape) * 4
        with torch.no_grad():
            assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-5)
        assert _count(model, nn.BatchNorm2d) > 0 and _count(folded, nn.BatchNorm2d) == 0
        assert _count(model, nn.BatchNorm2d) > 0  # the original is untouched


def test_resnet18_keeps_its_convolutions():
    model = build_model(
        "resnet", RESNET18_CIFAR, input_shape=(3, 32, 32), classes=10, mean=(0.0,) * 3, std=(1.0,) * 3
    ).eval()
    folded = fold_batchnorm(model)
    assert _count(folded, nn.Conv2d) == _count(model, nn.Conv2d) == 20


def test_a_batchnorm_not_after_a_conv_stays():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    _randomise_bn(model)
    folded = fold_batchnorm(model)
    assert _count(folded, nn.BatchNorm2d) == 1
    x = torch.randn(2, 1, 6, 6)
    assert torch.allclose(folded(x), model(x), atol=1e-6)
