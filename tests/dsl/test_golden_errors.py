"""Golden error text: every malformed spec in golden/ is rejected with exactly its .err text.

Regenerate after an intended change of wording with ADL_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adl.cli import main

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.adl"))


def test_there_are_enough_cases():
    assert len([c for c in CASES if c.startswith("syntax_")]) >= 10
    assert len([c for c in CASES if c.startswith("semantic_")]) >= 20


@pytest.mark.parametrize("case", CASES)
def test_golden_error(case, capsys, monkeypatch):
    monkeypatch.chdir(GOLDEN)
    code = main(["check", f"{case}.adl"])
    captured = capsys.readouterr()
    text = captured.err.replace(str(GOLDEN), "<golden>")
    expected_file = GOLDEN / f"{case}.err"
    if os.environ.get("ADL_UPDATE_GOLDEN"):
        expected_file.write_text(text)
    assert code == 2
    assert captured.out == ""
    assert "Traceback" not in text
    assert text == expected_file.read_text()
    first = text.splitlines()[0]
    assert first.startswith(f"{case}.adl:") and ": error: " in first


def test_cli_process_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.adl"
    bad.write_text((GOLDEN / "syntax_missing_equals.adl").read_text())
    proc = subprocess.run([sys.executable, "-m", "adl", "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{bad}:2:25: error: expected '=' after 'classes'" in proc.stderr
    assert "^~" in proc.stderr


@pytest.mark.parametrize(
    "garbage",
    [
        "\x00\x01\x02",
        "{{{{",
        "}}}}",
        "task" * 50,
        "spec s\n" * 3,
        "é ü",
        "pipeline { train(" + "[" * 40,
        '"' * 7,
        "constraints { latency <= 1e999 ms }",
    ],
)
def test_arbitrary_input_never_shows_a_traceback(garbage, tmp_path, capsys):
    path = tmp_path / "g.adl"
    path.write_text(garbage)
    code = main(["check", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "error:" in err
