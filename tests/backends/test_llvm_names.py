"""The target's mcpu and triple against LLVM's lists (the probe itself: tests/e2e/test_compile_failures.py)."""

from __future__ import annotations

from adl.backends.tvm.llvm_names import LlvmNames, cpu_problem, triple_problem

HOST = LlvmNames(
    "x86_64-pc-linux-gnu",
    "znver3",
    ("aarch64", "x86_64", "riscv64"),
    ("generic", "skylake", "skylake-avx512", "znver3"),
)
UNKNOWN = LlvmNames(
    "x86_64-pc-linux-gnu", "znver3", ("aarch64", "x86_64", "riscv64"), None, "TVM crashed on it (signal 11)"
)


def test_a_known_cpu_or_triple_is_no_problem():
    assert cpu_problem("skylake", None, HOST) is None
    assert triple_problem("x86_64-linux-gnu", HOST) is None


def test_an_unknown_cpu_lists_close_names_and_this_machines():
    assert cpu_problem("skylak", None, HOST) == (
        'LLVM does not know the CPU "skylak" for this machine (x86_64-pc-linux-gnu): TVM would build for a '
        "generic CPU instead",
        "close matches: skylake, skylake-avx512; this machine's CPU is znver3",
    )


def test_an_unknown_cpu_with_nothing_close_shows_some_known_ones():
    message, note = cpu_problem("zzzz", "aarch64-linux-gnu", HOST)
    assert message.startswith('LLVM does not know the CPU "zzzz" for aarch64-linux-gnu:')
    assert note == "LLVM knows 4 CPUs for it, e.g. generic, skylake, skylake-avx512, znver3"


def test_an_unknown_triple_names_how_llvm_failed_and_close_architectures():
    assert triple_problem("aarch46-linux-gnu", UNKNOWN) == (
        'LLVM does not know the target triple "aarch46-linux-gnu": TVM crashed on it (signal 11)',
        'a triple is arch-vendor-os, e.g. "aarch64-linux-gnu"; this machine\'s is "x86_64-pc-linux-gnu"; '
        "LLVM architectures close to 'aarch46': aarch64",
    )


def test_adl_hw_checks_a_target_argument_against_llvm(capsys):
    from adl.cli import main

    assert main(["hw", "calibrate", 'mcpu = "nonsense"']) == 2
    err = capsys.readouterr().err
    assert err.startswith('TARGET: error: mcpu: LLVM does not know the CPU "nonsense" for this machine')
    assert "Traceback" not in err
