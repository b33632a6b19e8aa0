"""bench/status.py (fresh, stale, untraceable results) and bench/provenance.py (what a result records).

The git cases run in a throwaway repository: a fake bench, its results, and commits that change
what it measures. The CPU flags come from sample /proc/cpuinfo texts, not from this machine.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import provenance  # bench/provenance.py and bench/status.py (tests/bench/conftest.py puts bench/ on the path)
import pytest
import status

REPO = Path(__file__).resolve().parents[2]


X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8
"""
ZEN3 = """processor\t: 0
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu sse sse2 avx avx2 fma bmi2
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""
TOY_BENCH = """MEASURES = ("bench/toy.py", "passes/toy")
OTHER = ("passes/toy/train.py",)
RESULT_MEASURES = {"toy_meta": OTHER}
"""


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def commit_all(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


def write(root: Path, path: str, text: str) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)


def result(root: Path, name: str, report: dict) -> None:
    write(root, f"bench/results/{name}.json", json.dumps(report))


def recorded_at(commit: str, changed: list[str] | None = None) -> dict:
    return {"provenance": {"git": {"commit": commit, "dirty": bool(changed), "changed": changed or []}}}


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    """A repository with bench/toy.py (measuring passes/toy) and bench/common.py, committed once."""
    git(tmp_path, "init", "-q")
    write(tmp_path, "bench/toy.py", TOY_BENCH)
    write(tmp_path, "bench/common.py", "")
    write(tmp_path, "passes/toy/search.py", "STEPS = 1\n")
    write(tmp_path, "passes/toy/train.py", "EPOCHS = 1\n")
    write(tmp_path, "docs/toy.md", "toy\n")
    return tmp_path, commit_all(tmp_path, "code")


def states(root: Path) -> dict[str, str]:
    return {Path(v.result).stem: str(v).split(": ", 1)[1] for v in status.statuses(root)}


def test_results_map_to_the_bench_with_the_longest_matching_name():
    benches = ["amc", "costmodel", "fuzz", "haq", "int8", "l2o", "lowering", "nas", "terngrad", "terngrad_adam"]
    expected = {
        "amc": "amc",
        "amc_width3": "amc",
        "haq": "haq",
        "haq_budget4": "haq",
        "haq_int8": "haq",
        "int8": "int8",
        "int8_avx512": "int8",
        "terngrad_adam": "terngrad_adam",
        "terngrad_adam_2": "terngrad_adam",
        "l2o_meta_train": "l2o",
        "l2o_quadratic_meta_train": "l2o",
        "l2o_quadratic_specialist": "l2o",
        "costmodel": "costmodel",
        "fuzz": "fuzz",
        "nas": "nas",
        "haqx": None,
        "amcwidth": None,
        "unknown": None,
    }
    assert {stem: status.bench_for(stem, benches) for stem in expected} == expected


def test_every_committed_result_has_a_bench_whose_measures_exist():
    names = status.bench_names(REPO)
    tracked = git(REPO, "ls-files", "--", "bench/results/*.json").splitlines()
    assert tracked
    for path in (REPO / name for name in tracked):
        bench = status.bench_for(path.stem, names)
        assert bench is not None, f"{path.name}: no bench/NAME.py"
        paths = status.measures(REPO / "bench" / f"{bench}.py", path.stem)
        assert paths, f"{path.name}: bench/{bench}.py declares no MEASURES"
        assert [p for p in paths if not (REPO / p).exists()] == [], f"bench/{bench}.py MEASURES"


def test_measures_reads_the_declaration_and_a_per_result_override(repo):
    root, _ = repo
    assert status.measures(root / "bench" / "toy.py") == ("bench/toy.py", "passes/toy")
    assert status.measures(root / "bench" / "toy.py", "toy_meta") == ("passes/toy/train.py",)
    assert status.measures(root / "bench" / "common.py") is None


def test_a_result_measured_at_the_last_change_is_fresh_until_a_measured_path_changes(repo, capsys):
    root, code = repo
    result(root, "toy", recorded_at(code))
    result(root, "toy_big", recorded_at(code))
    commit_all(root, "results")
    write(root, "docs/toy.md", "more\n")  # not measured
    commit_all(root, "docs")
    assert states(root) == {"toy": "fresh", "toy_big": "fresh"}
    assert status.main(["--root", str(root)]) == 0

    write(root, "passes/toy/search.py", "STEPS = 2\n")
    changed = commit_all(root, "change the search")
    assert states(root) == {
        name: f"stale (measured at {code[:7]}, passes/toy changed since in {changed[:7]})"
        for name in ("toy", "toy_big")
    }
    assert status.main(["--root", str(root)]) == 1
    assert f"bench/results/toy.json: stale (measured at {code[:7]}" in capsys.readouterr().out

    result(root, "toy", recorded_at(changed))  # measured again
    commit_all(root, "toy again")
    assert states(root)["toy"] == "fresh"


def test_a_per_result_override_decides_staleness(repo):
    root, code = repo
    result(root, "toy_meta", recorded_at(code))
    commit_all(root, "results")
    write(root, "passes/toy/search.py", "STEPS = 2\n")  # in MEASURES, not in RESULT_MEASURES["toy_meta"]
    commit_all(root, "change the search")
    assert states(root) == {"toy_meta": "fresh"}
    write(root, "passes/toy/train.py", "EPOCHS = 2\n")
    last = commit_all(root, "change the training")
    assert states(root) == {
        "toy_meta": f"stale (measured at {code[:7]}, passes/toy/train.py changed since in {last[:7]})"
    }


def test_results_that_cannot_be_traced_to_a_commit(repo, capsys):
    root, code = repo
    result(root, "toy", {"goals": {}})
    result(root, "toy_unknown", recorded_at("0123456789" * 4))
    result(root, "toy_dirty", recorded_at(code, changed=["passes/toy/search.py", "docs/toy.md"]))
    result(root, "toy_clean_enough", recorded_at(code, changed=["docs/toy.md"]))
    result(root, "toy_legacy", {"commit": code, "uncommitted_changes": False})
    result(root, "toy_legacy_dirty", {"commit": code, "uncommitted_changes": True})
    result(root, "toy_branch", recorded_at("HEAD"))
    result(root, "other", recorded_at(code))
    write(root, "bench/results/toy_broken.json", "[1, 2")
    write(root, "bench/results/untracked.json", "{}")
    commit_all(root, "results")
    (root / "bench/results/untracked.json").unlink()
    write(root, "bench/results/toy_new.json", "{}")  # never added: not listed
    assert states(root) == {
        "toy": "untraceable (no commit recorded)",
        "toy_unknown": "untraceable (commit 0123456 unknown to git)",
        "toy_dirty": f"untraceable (measured at {code[:7]} with uncommitted changes to passes/toy)",
        "toy_clean_enough": "fresh",
        "toy_legacy": "fresh",
        "toy_legacy_dirty": f"untraceable (measured at {code[:7]} with uncommitted changes (paths not recorded))",
        "toy_branch": "untraceable ('HEAD' is not a commit id)",
        "other": "untraceable (no bench/NAME.py for other.json)",
        "toy_broken": states(root)["toy_broken"],
    }
    assert states(root)["toy_broken"].startswith("untraceable (not a JSON object")
    assert status.main(["--root", str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9 and all(line.startswith("bench/results/") for line in lines)


def test_a_bench_without_measures_or_with_missing_paths_is_untraceable(repo):
    root, code = repo
    write(root, "bench/bare.py", "STEPS = 1\n")
    write(root, "bench/typo.py", 'MEASURES = ("bench/typo.py", "passes/nope")\n')
    result(root, "bare", recorded_at(code))
    result(root, "typo", recorded_at(code))
    commit_all(root, "benches")
    assert states(root) == {
        "bare": "untraceable (bench/bare.py declares no MEASURES)",
        "typo": "untraceable (bench/typo.py MEASURES paths that do not exist: passes/nope)",
    }


def test_provenance_of_a_run_in_a_committed_tree_makes_a_fresh_result(repo):
    root, code = repo
    write(root, "bench/results/toy.json", "{}")  # the bench's own output does not make the tree dirty
    record = provenance.provenance("digits", ["bench/toy.py", "--quick"], cpuinfo=X86, root=root)
    assert set(record) == {"dataset", "cpu", "cores", "git", "date", "argv", "python", "platform"}
    assert record["dataset"] == "digits" and record["argv"] == ["bench/toy.py", "--quick"]
    assert record["git"] == {"commit": code, "dirty": False, "changed": []}
    date = datetime.datetime.fromisoformat(record["date"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - date) < datetime.timedelta(minutes=5)
    assert record["cores"]["machine"] >= 1 and 1 <= record["cores"]["usable"] <= record["cores"]["machine"]
    result(root, "toy", {"provenance": record})
    commit_all(root, "results")
    assert states(root) == {"toy": "fresh"}


def test_provenance_records_uncommitted_changes_outside_the_results(repo):
    root, _ = repo
    write(root, "passes/toy/search.py", "STEPS = 3\n")
    write(root, "passes/toy/new.py", "\n")
    state = provenance.git_state(root)
    assert state["dirty"] is True and sorted(state["changed"]) == ["passes/toy/new.py", "passes/toy/search.py"]
    assert provenance.git_state(root / "passes") == state  # from a folder inside the checkout: the same


def test_provenance_outside_a_git_checkout(tmp_path):
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None, "changed": []}
    assert status.recorded({"provenance": {"git": provenance.git_state(tmp_path)}}) == (None, [])


def test_cpu_flags_from_an_x86_cpuinfo():
    assert provenance.cpu_info(X86, machine="x86_64") == {
        "model": "Intel(R) Xeon(R) Platinum 8480+",
        "architecture": "x86_64",
        "flags": {"avx2": True, "avx512f": True, "avx512bw": True, "avx512_vnni": True, "amx": True},
    }
    assert provenance.cpu_info(ZEN3, machine="x86_64")["flags"] == {
        "avx2": True,
        "avx512f": False,
        "avx512bw": False,
        "avx512_vnni": False,
        "amx": False,
    }


def test_cpu_off_x86_says_what_it_is():
    info = provenance.cpu_info(ARM, machine="aarch64")
    assert info["architecture"] == "aarch64" and info["flags"] is None and "aarch64" in info["note"]
    assert isinstance(info["model"], str) and info["model"]
    assert "flags unknown" in provenance.cpu_info("", machine="x86_64")["note"]  # no /proc/cpuinfo (macOS)


def test_stamping_a_result_another_tool_wrote(repo):
    root, code = repo
    write(root, "bench/results/toy_meta.json", json.dumps({"meta_loss": [1.0]}))
    path = root / "bench/results/toy_meta.json"
    assert provenance.main([str(path), "--dataset", "toy", "--", "adl", "l2o", "meta-train"]) == 0
    report = json.loads(path.read_text())
    assert report["meta_loss"] == [1.0] and report["provenance"]["argv"] == ["adl", "l2o", "meta-train"]
    assert report["provenance"]["git"]["commit"] == code  # the checkout the result lies in


def test_formatting_comments_import_order_and_moves_keep_a_result_fresh(repo):
    root, code = repo
    write(root, "passes/toy/search.py", "import os\nimport sys\n\nSTEPS = 1  # the steps\n")
    first = commit_all(root, "imports")
    result(root, "toy", recorded_at(first))
    commit_all(root, "results")
    write(root, "passes/toy/search.py", '"""Doc."""\nimport sys\nimport os\n\n\nSTEPS = (\n    1\n)\n')  # reformatted
    reformatted = commit_all(root, "reformat")
    assert states(root) == {
        "toy": f"fresh (the same code since {first[:7]}: formatting, comments, docstrings or moves)"
    }

    git(root, "mv", "passes", "lib")  # the folder moves; the bench's MEASURES follow it
    write(root, "bench/toy.py", TOY_BENCH.replace('"passes/toy"', '"lib/toy"').replace("passes/toy/", "lib/toy/"))
    commit_all(root, "move")
    assert states(root)["toy"].startswith("fresh (the same code since")

    write(root, "lib/toy/search.py", "import sys\nimport os\n\nSTEPS = 2\n")  # a real change
    changed = commit_all(root, "change")
    assert states(root) == {
        "toy": f"stale (measured at {first[:7]}, bench/toy.py, lib/toy changed since in {changed[:7]})"
    }
    assert reformatted != changed


def test_a_binary_file_under_a_measured_path_is_compared_byte_for_byte(repo):
    root, code = repo
    (root / "passes/toy/weights.npz").write_bytes(b"\x00\xb6\xff weights")
    first = commit_all(root, "weights")
    result(root, "toy", recorded_at(first))
    commit_all(root, "results")
    write(root, "docs/toy.md", "toy, again\n")
    write(root, "passes/toy/search.py", "STEPS = 1  # reformatted: the same code\n")
    commit_all(root, "comment")
    assert states(root)["toy"].startswith("fresh (the same code since")
    (root / "passes/toy/weights.npz").write_bytes(b"\x00\xb7\xff weights")
    changed = commit_all(root, "new weights")
    assert states(root)["toy"] == f"stale (measured at {first[:7]}, passes/toy changed since in {changed[:7]})"
