from __future__ import annotations

import pytest
import torch

from adl.ir.layers import LayerDesc, describe_model
from adl.models import build_model


def test_hand_computed_conv_and_linear():
    conv = LayerDesc("c", "conv2d", (1, 3, 8, 8), (1, 16, 8, 8), (3, 3))
    assert conv.params == 16 * 3 * 9
    assert conv.macs == 16 * 8 * 8 * 3 * 9
    assert conv.flops == 2 * conv.macs
    dw = LayerDesc("d", "dwconv2d", (1, 16, 8, 8), (1, 16, 4, 4), (5, 5), (2, 2), groups=16)
    assert dw.params == 16 * 25 and dw.macs == 16 * 4 * 4 * 25
    fc = LayerDesc("f", "linear", (1, 64), (1, 10), has_bias=True)
    assert fc.params == 650 and fc.macs == 640
    assert LayerDesc("f", "linear", (1, 64), (1, 10), weight_bits=4).weight_bytes == 320


def test_describe_mobilenet_finds_every_layer_with_shapes():
    torch.manual_seed(0)
    model = build_model(
        "mobilenet",
        {"kernels": (3, 5), "expand": (1, 6), "channels": (16, 16), "strides": (1, 2)},
        input_shape=(1, 8, 8),
        classes=10,
        mean=(0.0,),
        std=(1.0,),
    )
    layers = describe_model(model, (1, 1, 8, 8))
    ops = [layer.op for layer in layers]
    # stem, block 1 (dw, project, skip add), block 2 (expand, dw s2, project), head, pool, classifier
    assert ops == ["conv2d", "dwconv2d", "conv2d", "add", "conv2d", "dwconv2d", "conv2d", "conv2d", "pool", "linear"]
    dw2 = layers[5]
    assert dw2.kernel == (5, 5) and dw2.stride == (2, 2) and dw2.groups == 96
    assert dw2.input_shape == (1, 96, 8, 8) and dw2.output_shape == (1, 96, 4, 4)
    conv_params = sum(layer.params for layer in layers)
    torch_params = sum(p.numel() for n, p in model.named_parameters() if "weight" in n and p.dim() > 1)
    torch_params += model[1][-1].bias.numel()  # only the classifier has a bias
    assert conv_params == torch_params


@pytest.mark.parametrize(
    "family, options, shape",
    [
        ("mlp", {"hidden": (32,)}, (64,)),
        ("cnn", {"channels": (8, 16), "hidden": 0, "kernel": 3}, (3, 16, 16)),
        ("mobilenet", {}, (1, 8, 8)),
    ],
)
def test_model_families_build_and_run(family, options, shape):
    model = build_model(
        family,
        options,
        input_shape=shape,
        classes=7,
        mean=(0.5,) * (shape[0] if len(shape) == 3 else 1),
        std=(2.0,) * (shape[0] if len(shape) == 3 else 1),
    )
    out = model.eval()(torch.zeros(2, *shape))
    assert out.shape == (2, 7)


def test_normalisation_is_part_of_the_model():
    model = build_model("mlp", {"hidden": ()}, input_shape=(2,), classes=2, mean=(1.0, 2.0), std=(2.0, 4.0))
    normalize = model[0]
    assert torch.equal(normalize(torch.tensor([[3.0, 6.0]])), torch.tensor([[1.0, 1.0]]))


def test_image_families_refuse_flat_inputs():
    with pytest.raises(ValueError, match="use `model mlp"):
        build_model("cnn", {}, input_shape=(64,), classes=2, mean=(0.0,), std=(1.0,))
