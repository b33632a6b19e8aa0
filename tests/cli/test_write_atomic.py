"""`adl data -o` and `adl run -o` write their file atomically: a failed or killed write leaves the
old file (or none), never half of one."""

from __future__ import annotations

import pytest

from adl import cli


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "x.npz"
    out.write_bytes(b"old")

    def save(f):
        f.write(b"half of the new")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cli._write(out, save)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.npz"]
    cli._write(out, lambda f: f.write(b"new"))
    assert out.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["x.npz"]
