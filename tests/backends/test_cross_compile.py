"""Cross-compilation: an aarch64 library from this x86 host, checked by its ELF header."""

from __future__ import annotations

import shutil
import struct

import pytest
from torch import nn

from adl.backends.tvm.build import LoweringError, build_library, cross_compiler_for

EM_AARCH64 = 183


def elf_machine(path) -> tuple[bytes, int, int]:
    """(magic, class: 2 = 64-bit, e_machine) of an ELF file."""
    header = path.read_bytes()[:20]
    return header[:4], header[4], struct.unpack_from("<H", header, 18)[0]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-g++") is None,
    reason="aarch64 cross compiler not installed (apt-get install g++-aarch64-linux-gnu; .ci/run does)",
)
def test_aarch64_library_is_an_aarch64_elf(tmp_path):
    import numpy as np

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    info = build_library(
        model,
        np.zeros((1, 1, 8, 8), np.float32),
        {"kind": "llvm", "num-cores": 4, "mtriple": "aarch64-linux-gnu"},
        tmp_path / "model.so",
    )
    assert info.cross_compiled
    assert elf_machine(tmp_path / "model.so") == (b"\x7fELF", 2, EM_AARCH64)


def test_native_triple_needs_no_cross_compiler():
    import platform

    assert cross_compiler_for({"kind": "llvm"}) is None
    assert cross_compiler_for({"kind": "llvm", "mtriple": f"{platform.machine()}-linux-gnu"}) is None


def test_a_missing_cross_compiler_is_a_clear_error():
    with pytest.raises(LoweringError, match=r"needs riscv64-linux-gnu-g\+\+, which is not installed"):
        cross_compiler_for({"kind": "llvm", "mtriple": "riscv64-linux-gnu"})
