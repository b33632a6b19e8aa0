"""Hostile input to `adl check` (issue 19): every case is exit 2 with a one-screen message, never a crash.

The caret errors of spec text are golden files (golden/*.adl); these are the cases a golden
file cannot hold: paths, devices, byte-order marks, command-line arguments, and the limits
themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adl.cli import main
from adl.driver.check import DATA_SOURCES, MODEL_FAMILIES, TARGET_OPTIONS, TASKS, load_spec
from adl.dsl import parser as dsl_parser
from adl.ir.options import Option
from adl.ir.passes import default_registry

GOOD = """spec s
task classify { classes = 10 }
data digits { split = 0.8 }
model cnn()
pipeline { train lower }
"""


def check(path: str | Path, capsys) -> tuple[int, str, str]:
    code = main(["check", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_byte_order_mark_is_skipped(tmp_path, capsys):
    path = tmp_path / "bom.adl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert check(path, capsys) == (
        0,
        f"{path}: ok: spec 's', digits data, target host, 0 budget(s), pipeline train,lower\n",
        "",
    )
    assert load_spec("\ufeff" + GOOD).name == "s"


def _symlink_loop(tmp_path: Path) -> Path:
    (tmp_path / "a.adl").symlink_to(tmp_path / "b.adl")
    (tmp_path / "b.adl").symlink_to(tmp_path / "a.adl")
    return tmp_path / "a.adl"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp, "cannot read spec: Is a directory"),
        (lambda tmp: tmp / "missing.adl", "cannot read spec: No such file or directory"),
        (lambda tmp: tmp / ("x" * 300 + ".adl"), "cannot read spec: File name too long"),
        (lambda tmp: str(tmp / "a\0b.adl"), "cannot read spec: the path contains a NUL byte"),
        (_symlink_loop, "cannot read spec: Too many levels of symbolic links"),
        (lambda tmp: "/dev/zero", "spec is larger than 1 MiB"),
    ],
    ids=["directory", "missing", "name-too-long", "nul-byte", "symlink-loop", "dev-zero"],
)
def test_a_spec_path_that_cannot_be_read_is_a_clean_error(make, message, tmp_path, capsys):
    path = str(make(tmp_path))
    shown = path.replace("\0", "\\x00")
    if len(shown) > 400:  # a long name is cut in the middle
        shown = f"{shown[:200]} ... {shown[-200:]}"
    assert check(path, capsys) == (2, "", f"{shown}: error: {message}\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_spec_is_a_clean_error(tmp_path, capsys):
    path = tmp_path / "secret.adl"
    path.write_text(GOOD)
    path.chmod(0)
    assert check(path, capsys) == (2, "", f"{path}: error: cannot read spec: Permission denied\n")


def test_a_spec_over_the_size_limit_is_refused(tmp_path, capsys):
    path = tmp_path / "big.adl"
    path.write_text(GOOD + "#" * dsl_parser.MAX_SPEC_BYTES)
    assert check(path, capsys) == (2, "", f"{path}: error: spec is larger than 1 MiB\n")


def test_text_that_is_not_utf8_is_an_error_at_the_byte(tmp_path, capsys):
    path = tmp_path / "latin1.adl"
    path.write_bytes(b"spec s\ntask classify { classes = 10 }  # caf\xe9\n")
    assert check(path, capsys) == (
        2,
        "",
        f"{path}:2:38: error: spec is not UTF-8 text: cannot decode byte 0xe9\n"
        "   2 | task classify { classes = 10 }  # caf\ufffd\n"
        "     |                                      ^\n",
    )


@pytest.mark.parametrize(
    "path, message",
    [
        ("a\0b.npz", "data path 'a\\x00b.npz' cannot be used: it contains a NUL byte"),
        ("x" * 300 + ".npz", f"data path '{'x' * 300}.npz' cannot be used: File name too long"),
        ("loop.npz", "data path 'loop.npz' cannot be used: Too many levels of symbolic links"),
    ],
    ids=["nul-byte", "name-too-long", "symlink-loop"],
)
def test_a_data_path_that_cannot_be_used_is_an_error_at_it(path, message, tmp_path, capsys):
    (tmp_path / "loop.npz").symlink_to(tmp_path / "loop.npz")
    spec = tmp_path / "s.adl"
    spec.write_text(GOOD.replace("data digits { split = 0.8 }", f'data npz {{ path = "{path}" }}'))
    code, out, err = check(spec, capsys)
    assert (code, out) == (2, "")
    first, line, caret = err.splitlines()
    assert first == f"{spec}:3:19: error: {message}"
    assert line.startswith("   3 | data npz { path = ") and caret.startswith("     |                   ^~~")


def test_a_file_name_that_looks_like_markup_prints_as_text(tmp_path, capsys):
    path = tmp_path / "[bold]x[red].adl"
    path.write_text(GOOD)
    code, out, _ = check(path, capsys)
    assert code == 0 and out.startswith(f"{path}: ok:")


@pytest.mark.parametrize("seed", ["-1", "4294967296", "9" * 5000, "x"])
def test_a_seed_out_of_range_is_a_usage_error(seed, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compile", "examples/digits_fixed.adl", "--seed", seed])
    assert exit_.value.code == 2
    assert "argument --seed:" in capsys.readouterr().err


def test_the_largest_seed_is_accepted():
    from adl.cli import _parser

    assert _parser().parse_args(["compile", "x.adl", "--seed", "4294967295"]).seed == 2**32 - 1


class _CountingSource(str):
    """A source that counts the characters read from it through slices."""

    read = 0

    def __getitem__(self, key):
        part = str.__getitem__(self, key)
        type(self).read += len(part)
        return part

    def splitlines(self, *args, **kwargs):  # a whole-source scan per node is what made it quadratic
        raise AssertionError("the transformer re-splits the source")


def test_numbers_read_their_text_in_linear_work():
    """20,000 numbers: the AST builder reads each number's text once, never the whole source again."""
    text = GOOD.replace("model cnn()", "model mlp(hidden = [" + ", ".join(["64"] * 20_000) + "])")
    tree = dsl_parser._parser().parse(text, start="start")
    source = _CountingSource(text)
    _CountingSource.read = 0
    dsl_parser._ToAst(source, "s.adl").transform(tree)
    assert _CountingSource.read <= 2 * len(text)


def test_nesting_at_the_limit_parses_and_past_it_is_refused():
    at = GOOD.replace("model cnn()", "model mlp(hidden = " + "[" * 31 + "1" + "]" * 31 + ")")
    assert dsl_parser.parse(at)  # 31 lists in a call: 32 levels
    with pytest.raises(dsl_parser.AdlError, match="nesting deeper than 32 levels"):
        dsl_parser.parse(at.replace("[", "[[", 1).replace("]", "]]", 1))


def test_brackets_in_strings_and_comments_do_not_count():
    text = GOOD + "# " + "[" * 100 + "\n" + 'target host { mcpu = "' + "(" * 100 + '" }\n'
    assert dsl_parser.parse(text)


def _numeric_options() -> list[tuple[str, Option]]:
    """Every number-valued option a spec can set, except cost models' (those are adl.hwmodels')."""
    found: list[tuple[str, Option]] = []

    def walk(owner: str, options) -> None:
        for opt in options:
            if opt.kind == "call" and opt.name != "cost":
                for callee, schema in opt.calls.items():
                    walk(f"{owner}.{opt.name}={callee}", schema)
            elif opt.kind in ("int", "float", "int_list", "int_range", "time", "count"):
                found.append((owner, opt))

    for table in (TASKS, DATA_SOURCES, MODEL_FAMILIES):
        for name, schema in table.items():
            walk(name, schema)
    walk("target", TARGET_OPTIONS)
    for pass_cls in default_registry():
        walk(pass_cls.name, pass_cls.options)
    return found


def test_every_size_and_count_option_has_an_upper_bound():
    unbounded = [f"{owner}: {opt.name}" for owner, opt in _numeric_options() if opt.high is None]
    assert unbounded == []
