from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import adl
from adl.dsl.errors import AdlError
from adl.ir.spec import CallValue

ROOT = Path(__file__).resolve().parents[2]

FULL = """
# every block
spec demo
task classify { classes = 10 }
data digits(split = 75 %, seed = 3)
model mobilenet(kernels = [3, 5], expand = [1, 6], channels = [16, 24], strides = [1, 2], width = 0.5)
target board { kind = llvm  cores = 4  mcpu = "znver3" }
constraints {
  latency  <= 250 us
  size     <= 1.5 MiB
  accuracy >= 0.97
  flops    <= 12 MFLOPs
  params   <= 40 K
}
pipeline {
  train(epochs = 5) { optimizer = sgd(lr = 0.1)  schedule = constant }
  lower
}
"""


def test_a_full_spec_checks_into_normalised_values():
    spec = adl.check(FULL, "demo.adl")
    assert spec.name == "demo"
    assert spec.task.classes == 10
    assert (spec.data.source, spec.data.split, spec.data.seed) == ("digits", 0.75, 3)
    assert spec.model.family == "mobilenet" and spec.model.as_dict()["width"] == 0.5
    assert spec.target.tvm_target() == {"kind": "llvm", "num-cores": 4, "mcpu": "znver3"}
    budgets = {b.metric: b for b in spec.budgets}
    assert budgets["latency"].value == pytest.approx(250e-6) and budgets["latency"].op == "<="
    assert budgets["size"].value == 1.5 * 1024 * 1024
    assert budgets["accuracy"].value == 0.97 and not budgets["accuracy"].is_upper
    assert budgets["flops"].value == 12e6
    assert budgets["params"].value == 40e3
    train, lower = spec.pipeline
    assert train.pass_name == "train"
    assert train.as_dict()["epochs"] == 5
    assert train.as_dict()["optimizer"] == CallValue(
        "sgd", (("lr", 0.1), ("momentum", 0.9), ("weight_decay", 0.0005), ("nesterov", True))
    )
    assert lower.pass_name == "lower" and lower.options == ()


def test_spans_survive_into_the_ir():
    spec = adl.check(FULL, "demo.adl")
    latency = spec.budget("latency")[0]
    assert (latency.span.line, latency.span.column) == (9, 3)


def test_defaults_when_blocks_are_omitted():
    spec = adl.check("task classify { classes = 3 }\ndata digits\nmodel cnn\npipeline { train }", "x.adl")
    assert spec.name == "x"
    assert spec.target.kind == "llvm" and spec.target.cores >= 1
    assert spec.data.split == 0.8 and spec.budgets == ()


def test_relative_data_paths_resolve_against_the_spec(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.npz").write_bytes(b"")
    spec_file = tmp_path / "s.adl"
    spec_file.write_text('task classify { classes = 2 }\ndata npz { path = "d/x.npz" }\nmodel mlp\npipeline { train }')
    from adl.driver.check import load_spec_file

    assert load_spec_file(spec_file).data.path == str(tmp_path / "d" / "x.npz")


def test_unreadable_spec_is_a_clean_error(tmp_path):
    path = tmp_path / "binary.adl"
    path.write_bytes(b"\xff\xfe\x00garbage")
    from adl.driver.check import load_spec_file

    with pytest.raises(AdlError) as error:
        load_spec_file(path)
    assert error.value.render().splitlines()[0] == f"{path}:1:1: error: spec is not UTF-8 text: cannot decode byte 0xff"
    with pytest.raises(AdlError) as error:
        load_spec_file(tmp_path / "missing.adl")
    assert error.value.render() == f"{tmp_path / 'missing.adl'}: error: cannot read spec: No such file or directory"


def test_check_imports_no_torch_tvm_or_jax():
    code = (
        "import sys; from adl.cli import main; rc = main(['check', 'examples/digits_fixed.adl']); "
        "heavy = [m for m in ('torch', 'tvm', 'jax', 'sklearn') if m in sys.modules]; "
        "assert rc == 0 and not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_parse_keeps_comments_out_and_positions_in():
    tree = adl.parse("# c\nspec a # trailing\n", "p.adl")
    (item,) = tree.items
    assert item.name == "a" and (item.span.line, item.span.column) == (2, 6)


def test_validation_is_a_data_option_of_every_source():
    spec = adl.check(
        "task classify { classes = 10 }\ndata digits { validation = 15 % }\nmodel cnn\npipeline { train }", "v.adl"
    )
    assert spec.data.validation == 0.15
    assert (
        adl.check("task classify { classes = 10 }\ndata digits\nmodel cnn\npipeline { train }", "v.adl").data.validation
        == 0.0
    )


def test_a_validation_split_that_leaves_no_training_points_at_it():
    with pytest.raises(AdlError) as info:
        adl.check(
            "task classify { classes = 10 }\ndata digits { validation = 100 % }\nmodel cnn\npipeline { train }", "v.adl"
        )
    assert str(info.value).startswith("v.adl:2:28: error: 'validation' must leave samples for training")
    assert str(info.value).endswith("^~~~~")
