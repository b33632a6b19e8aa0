"""amc's channel groups and haq's fake quantisation on torchvision's architectures, as users bring them:
`torchvision.models.get_model(name, weights=None, num_classes=10)` with the stem convolution taking one
input channel, at 32x32.

MobileNetV2, ResNet-18/50 (a ReLU module called twice per block), MNASNet, EfficientNet-B0
(squeeze-and-excitation: a (N, C, 1, 1) scale times the (N, C, H, W) map; StochasticDepth) and
ShuffleNetV2 (channel shuffle: view -> transpose -> view; chunk; cat) all build a channel graph and
prune; in ShuffleNetV2 the channels that meet the shuffle are fixed, naming the op, and the inner
channels of every branch stay prunable. A network with a grouped convolution (ResNeXt) is refused,
naming the layer.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn

from adl.ir.layers import describe_model
from adl.passes.amc.env import AmcEnv, PolicyScore, Resources
from adl.passes.amc.reconstruct import Reconstructor
from adl.passes.channels import ChannelGraph, PruningError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (2, 1, 32, 32)

# prunable groups per network: every conv/linear output except the logits (and, in ShuffleNetV2, the
# channels that meet a channel shuffle); groups tied by residual additions count once
PRUNABLE = {
    "mobilenet_v2": 25,
    "resnet18": 12,
    "resnet50": 37,
    "mnasnet1_0": 25,
    "efficientnet_b0": 40,
    "shufflenet_v2_x1_0": 18,
}


def import_torchvision() -> types.ModuleType:
    """torchvision (through adl's import, which copes with a CUDA build beside the CPU torch), or a skip."""
    from adl.models.torchvision_import import import_torchvision as load

    try:
        return load()
    except ImportError as err:
        pytest.skip(f"torchvision cannot be imported: {err}")


def calibrate_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics measured on a random batch, as a trained network's are, and random affine
    parameters. With a fresh BatchNorm's (mean 0, variance 1) the activations of a freshly initialised
    MobileNetV2, MNASNet, EfficientNet or ShuffleNetV2 shrink layer after layer until the logits no
    longer depend on the input (1e-7 of their size): a wrongly cut early layer would go unseen. Measured
    statistics keep every layer's output at unit scale; the random scales and shifts make a wrongly
    sliced BatchNorm show."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average: after one batch, that batch's statistics
        model.train()(torch.randn(16, *SHAPE[1:], generator=generator))
        for norm in norms:
            norm.momentum = 0.1
            norm.weight.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
            norm.bias.copy_(torch.randn(norm.num_features, generator=generator) * 0.1)
    return model.eval()


def network(name: str, seed: int = 0) -> nn.Module:
    """torchvision's `name` for 10 classes, its stem convolution taking one channel, BatchNorms calibrated."""
    torchvision = import_torchvision()
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    path, stem = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent, _, child = path.rpartition(".")
    setattr(
        model.get_submodule(parent) if parent else model,
        child,
        nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=stem.bias is not None),
    )
    return calibrate_batchnorm(model, seed)


def half_of_every_group(graph: ChannelGraph) -> dict[int, np.ndarray]:
    return graph.select({g.index: g.size // 2 for g in graph.prunable})


def flops(model: nn.Module) -> int:
    return sum(layer.flops for layer in describe_model(model, SHAPE))


@pytest.mark.parametrize("name", PRUNABLE)
def test_torchvision_networks_build_a_channel_graph_with_prunable_groups(name):
    graph = ChannelGraph(network(name), SHAPE)
    assert len(graph.prunable) == PRUNABLE[name]
    assert graph.groups[0].fixed == "the network's input" and graph.groups[0].size == 1
    assert all(g.producers for g in graph.prunable)  # what the amc environment describes each decision by
    if name.startswith("resnet"):  # each stage's residual stream is one group: shortcut and block outputs tied
        stream = next(g for g in graph.groups if "layer2.0.downsample.0" in g.producers)
        assert sorted(stream.producers) == sorted(
            ["layer2.0.downsample.0"] + [p for p in stream.producers if p.endswith(("conv2", "conv3"))]
        )
        assert len(stream.producers) == (3 if name == "resnet18" else 5)
    if name == "efficientnet_b0":
        # squeeze-and-excitation: the squeeze channels are a group of their own; the scale (fc2) is tied
        # to the channels it multiplies, those of the block's expansion
        squeeze = next(g for g in graph.groups if g.producers == ["features.2.0.block.2.fc1"])
        assert squeeze.prunable and squeeze.size == 4
        expanded = next(g for g in graph.groups if "features.2.0.block.2.fc2" in g.producers)
        assert sorted(expanded.producers) == ["features.2.0.block.0.0", "features.2.0.block.2.fc2"]
        assert expanded.prunable and expanded.size == 96
    if name == "shufflenet_v2_x1_0":
        # every branch's inner channels (1x1 conv -> depthwise -> 1x1 conv) never meet the shuffle
        inner = sorted(g.name for g in graph.prunable if ".branch2.0" in g.name)
        assert len(inner) == 16 and {g.name for g in graph.prunable} == {"conv1.0", "conv5.0", *inner}
        # a block's output passes through the channel shuffle's view, which starts a fixed group
        out = next(g for g in graph.groups if g.name == "stage2.0.branch2.5")
        assert out.fixed == "passes through node 'view' (view), which channel pruning cannot follow"
        halves = [
            g for g in graph.groups if g.fixed == "made by node 'chunk' (chunk), which channel pruning cannot follow"
        ]
        assert [g.size for g in halves] == [58, 58]
        with pytest.raises(ValueError, match="passes through node 'view'"):
            graph.select({out.index: 8})
        with pytest.raises(ValueError, match="made by node 'chunk'"):
            graph.prune({halves[0].index: np.arange(8)})


@pytest.mark.parametrize("name", PRUNABLE)
def test_pruning_half_of_every_group_gives_a_smaller_network_computing_the_masked_original(name):
    model = network(name)
    graph = ChannelGraph(model, SHAPE)
    keep = half_of_every_group(graph)
    pruned, masked = graph.prune(keep), graph.masked(keep)
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, expected, original = pruned(x), masked(x), model(x)
    assert got.shape == original.shape == (SHAPE[0], 10)
    # pruned and masked add up the same nonzero terms (the masked one also exact zeros, which oneDNN may
    # block and order differently): each layer's float32 rounding, ~sqrt(n) * 2^-24 of its terms,
    # carried through up to 50 layers. Measured at most 7.8e-7 of max|output| (EfficientNet-B0; each
    # within 4.6e-6 of a float64 forward pass); 1e-4 of it leaves a 100x margin. A real error is far
    # larger: squeeze-and-excitation's scale left untied from its channels moves the output by 22% of it.
    scale = float(expected.abs().max())
    tolerance = 1e-4 * scale
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=tolerance)
    assert float((expected - original).abs().max()) > 100 * tolerance  # the channels cut did matter
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    # FLOPs: a conv between two halved groups keeps a quarter of its FLOPs, one with a fixed side (the
    # stem, ShuffleNetV2's shuffled channels) half; the re-derived costs the search uses are exact
    before, after = flops(model), flops(pruned)
    assert after < 0.6 * before
    table = graph.layer_table()
    counts = table.full_counts.copy()
    for g, kept in keep.items():
        counts[g] = len(kept)
    assert table.flops_per_layer(counts).sum() == after


@pytest.mark.parametrize("name", ["efficientnet_b0", "shufflenet_v2_x1_0"])
def test_the_amc_environment_meets_a_flops_budget_on_torchvision_networks(name):
    """The search's machinery end to end, without a search: uniform pruning under half the FLOPs, the
    next layers refitted by least squares (squeeze-and-excitation's fc1 reads a pooled map)."""
    model = network(name)
    graph = ChannelGraph(model, (1, *SHAPE[1:]))
    samples = np.random.default_rng(2).standard_normal((16, *SHAPE[1:])).astype(np.float32)
    resources = Resources(graph.layer_table(), {"flops": 0.5})
    env = AmcEnv(
        graph, resources, lambda m: PolicyScore(0.5, 1.0), multiple=8, reconstruct=Reconstructor(graph, samples)
    )
    counts = env.uniform_counts()
    assert resources.within(counts)
    pruned = env.build(counts)
    assert flops(pruned) == pytest.approx(resources.cost(counts, ["flops"])["flops"] * SHAPE[0])
    assert flops(pruned) <= 0.5 * flops(model)
    with torch.no_grad():
        assert pruned(torch.from_numpy(samples[:2])).shape == (2, 10)


def test_a_torchvision_network_with_grouped_convolutions_is_refused_naming_the_layer():
    torchvision = import_torchvision()
    model = torchvision.models.get_model("resnext50_32x4d", weights=None, num_classes=10)
    with pytest.raises(PruningError, match=r"layer 'layer1\.0\.conv2' is a grouped convolution \(groups=32"):
        ChannelGraph(model, (1, 3, 32, 32))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_haq_fake_quantisation_wraps_every_conv_and_linear_of_a_torchvision_network(name):
    from adl.passes.haq.budget import BitPolicy
    from adl.passes.haq.model import FakeQuantLayer, quantize_model

    model = network(name)
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    samples = torch.randn(8, *SHAPE[1:], generator=torch.Generator().manual_seed(3))
    quantized = quantize_model(model, BitPolicy.uniform(layers, 8), samples)
    wrapped = [m for m in quantized.modules() if isinstance(m, FakeQuantLayer)]
    assert len(wrapped) == layers
    bare = {m for m in quantized.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert bare == {m.layer for m in wrapped}  # no conv or linear left unquantized
    with torch.no_grad():
        out = quantized(samples)
    assert out.shape == (8, 10) and bool(torch.isfinite(out).all())


@pytest.mark.slow
def test_a_pruned_torchvision_mobilenet_v2_lowers_with_tvm(tmp_path):
    """~15 s on one core: the dense pruned network exports and compiles like any other."""
    from adl.backends.tvm.build import build_library, max_abs_difference

    graph = ChannelGraph(network("mobilenet_v2"), SHAPE)
    pruned = graph.prune(half_of_every_group(graph))
    inputs = np.random.default_rng(4).standard_normal((4, *SHAPE[1:])).astype(np.float32)
    info = build_library(pruned, inputs, {"kind": "llvm", "num-cores": 1}, tmp_path / "pruned.so")
    assert info.output_shape == (1, 10)
    with torch.no_grad():
        scale = float(pruned(torch.from_numpy(inputs)).abs().max())
    # TVM against PyTorch: other summation orders and FMA contraction, each a float32 rounding of
    # ~sqrt(n) * 2^-24 per layer relative to the terms; 1e-4 of the output's magnitude, as above
    assert max_abs_difference(pruned, tmp_path / "pruned.so", inputs) <= 1e-4 * scale
