"""The torch-free geometry of the MobileNet space and its pricing agree with the PyTorch
models and the search's latency table; an impossible budget is refused before torch loads."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from adl.hwmodels.bitserial import BitSerialModel
from adl.hwmodels.roofline import RooflineModel
from adl.ir.spec import CallValue, TargetSpec
from adl.models.space import MobileNetSpace, inverted_residual_layers, network_layers
from adl.passes.nas.static_pricing import fastest_mobilenet

torch = pytest.importorskip("torch")

from adl.ir.layers import describe_model
from adl.models.zoo import InvertedResidual


def geometry(layers):
    return [
        (l.op, l.input_shape, l.output_shape, l.kernel, l.stride, l.groups, l.has_bias, l.activation) for l in layers
    ]


@pytest.mark.parametrize(
    "cin,cout,kernel,expand,stride,size",
    [(8, 8, 3, 1, 1, (8, 8)), (8, 16, 5, 3, 2, (8, 8)), (16, 16, 7, 6, 1, (5, 5)), (12, 24, 3, 6, 2, (7, 9))],
)
def test_inverted_residual_geometry_matches_the_torch_block(cin, cout, kernel, expand, stride, size):
    block = InvertedResidual(cin, cout, kernel, expand, stride)
    assert geometry(inverted_residual_layers(cin, cout, kernel, expand, stride, size)) == geometry(
        describe_model(block, (1, cin, *size))
    )


@pytest.mark.parametrize("seed", range(4))
def test_network_geometry_matches_the_built_model(seed):
    rng = random.Random(seed)
    space = MobileNetSpace(
        (rng.choice([1, 3]), rng.choice([8, 12, 32]), 8),
        10,
        blocks=rng.randint(1, 6),
        kernels=(3, 5),
        expand=(1, 3, 6),
        widths=(rng.choice([0.5, 1.0, 1.5]),),
        stem=rng.choice([8, 16]),
        head=rng.choice([16, 64]),
    )
    arch = space.sample(rng)
    assert geometry(network_layers(space, arch)) == geometry(describe_model(space.build(arch), (1, *space.input_shape)))


@pytest.mark.parametrize("model", [RooflineModel(), BitSerialModel(preset="edge")], ids=["roofline", "bitserial"])
def test_the_fastest_network_is_priced_as_the_torch_models_describe_it(model):
    from adl.passes.nas import _fastest, supernet_for
    from adl.passes.nas.pricing import price_candidates
    from adl.passes.nas.search import LatencyTable
    from adl.passes.nas.static_pricing import price_pieces

    option = CallValue(
        "mobilenet",
        (
            ("blocks", 3),
            ("kernels", (3, 5)),
            ("expand", (1, 3)),
            ("width", 0.5),
            ("skip", True),
            ("stem", 8),
            ("head", 16),
        ),
    )
    supernet = supernet_for(option, (1, 8, 8), 10)
    space, target = supernet.space, TargetSpec("host")
    pieces, size = [], (8, 8)  # every candidate described from its PyTorch module
    for (cin, cout, stride), choices in zip(space.block_shapes(0.5), supernet.choices):
        pieces.append(
            [
                [
                    []
                    if c.skip
                    else describe_model(InvertedResidual(cin, cout, c.kernel, c.expand, stride), (1, cin, *size))
                ]
                for c in choices
            ]
        )
        size = tuple(-(-d // stride) for d in size)
    whole = describe_model(space.build(space.first(0.5)), (1, *space.input_shape))
    from_torch = _fastest(LatencyTable(*price_pieces(pieces, whole, model, target, [0] * space.blocks)))
    assert fastest_mobilenet(space, 0.5, model, target) == pytest.approx(from_torch, rel=1e-9)
    assert _fastest(price_candidates(supernet, model, target)) == pytest.approx(from_torch, rel=1e-9)


def test_geometry_names_every_layer_of_a_piece_apart():
    """Cost models key per-layer costs by name (measured does), so names must be unique."""
    space = MobileNetSpace((1, 8, 8), 10, blocks=3, kernels=(3,), expand=(1, 6))
    for piece in space.candidate_layers():
        names = [layer.name for layer in piece]
        assert len(set(names)) == len(names) and all(names)


SPEC = """
spec searched
task classify { classes = 10 }
data digits { split = 0.8  seed = 0 }
target host { cores = 2 }
constraints { latency <= 1 ns }
pipeline {
  nas { space = mobilenet(blocks = 2, kernels = [3, 5], expand = [1, 3], width = 0.5, stem = 8, head = 16) }
  train { epochs = 2 }
  amc { flops = 50 % }
  lower
}
"""


def test_an_impossible_budget_is_refused_before_data_torch_or_jax_load(tmp_path):
    spec = tmp_path / "s.adl"
    spec.write_text(SPEC)
    code = (
        "import json, sys\n"
        "from adl.driver.check import load_spec_file\n"
        "from adl.driver.run import compile_spec as run\n"
        "from adl.dsl.errors import AdlError\n"
        f"try:\n    run(load_spec_file({str(spec)!r}), out_dir={str(tmp_path / 'out')!r})\n"
        "except AdlError as err:\n"
        "    print(json.dumps({'error': err.render(), 'loaded': [m for m in ('torch', 'jax', 'sklearn', 'tvm')"
        " if m in sys.modules]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert "below the fastest network of the nas space" in result["error"]
    assert "share of the spec's 1e-06 ms: compression passes follow" in result["error"]  # amc follows
