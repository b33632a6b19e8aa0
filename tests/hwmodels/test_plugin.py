"""examples/plugin_costmodel: pip-installed into this venv, it is found through the
`adl.hwmodels` entry point, checked in a spec and used to price layers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.fixture(scope="module")
def installed_plugin(install_example):
    return install_example("plugin_costmodel", "adl-plugin-costmodel")


SCRIPT = textwrap.dedent("""
    import sys
    import adl
    from adl.ir.layers import LayerDesc
    from adl.hwmodels import default_registry

    spec = adl.check('''
    task classify { classes = 10 }
    data digits
    model mlp()
    target host { cost = my_model(ns_per_mac = 2) }
    pipeline { train }
    ''')
    model = default_registry().create(spec.target.cost)
    layers = [LayerDesc("conv", "conv2d", (1, 3, 8, 8), (1, 16, 8, 8), (3, 3)),
              LayerDesc("fc", "linear", (1, 256), (1, 10), has_bias=True)]
    cost = model.estimate(layers, spec.target)
    print(type(model).__module__, spec.target.cost.get("ns_per_mac"), repr(cost.latency_s), cost.energy_j,
          cost.memory_bytes)
    assert not [m for m in ("torch", "tvm") if m in sys.modules]
""")


def test_plugin_is_registered_checked_and_prices_layers(installed_plugin, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    module, ns, latency, energy, memory = proc.stdout.split()
    assert (module, ns, energy) == ("adl_macs_model", "2.0", "None")
    # (27648 + 2560) MACs * 2 ns
    assert float(latency) == pytest.approx(30208 * 2e-9)
    # weights 432*4 + 2570*4; peak activations (192 + 1024)*4
    assert int(memory) == 432 * 4 + 2570 * 4 + 1216 * 4

    listed = subprocess.run([sys.executable, "-m", "adl", "hw", "list"], capture_output=True, text=True)
    assert listed.returncode == 0 and "my_model:" in listed.stdout and "ns_per_mac" in listed.stdout


def test_plugin_options_are_checked_with_a_caret(installed_plugin, tmp_path):
    spec = tmp_path / "bad.adl"
    spec.write_text(
        "task classify { classes = 10 }\ndata digits\nmodel mlp()\n"
        "target host { cost = my_model(ns_per_mac = fast) }\npipeline { train }\n"
    )
    proc = subprocess.run([sys.executable, "-m", "adl", "check", str(spec)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{spec}:4:44: error: 'ns_per_mac' must be a number" in proc.stderr
    assert "^~~~" in proc.stderr
