"""Which committed benchmark results predate the code they measure.

    python -m bench.status [--root DIR]          (make bench-status)

Each bench/NAME.py declares `MEASURES`, the repository paths its figures depend on. A result
bench/results/NAME.json or NAME_SUFFIX.json belongs to the bench with the longest such NAME
(terngrad_adam.json: terngrad_adam.py; haq_budget4.json: haq.py) and measures its MEASURES, or
`RESULT_MEASURES[stem]` where the bench declares one for a result another tool writes under its
name (l2o_meta_train.json: meta-training, whose output, the shipped weights, bench/l2o.py measures).
A result is

  fresh        the last commit that changed a MEASURES path is an ancestor of (or is) the commit
               the result records (its "provenance", see bench/provenance.py);
  stale        a MEASURES path changed in a later commit;
  untraceable  no commit recorded, a commit git does not know, uncommitted changes to a MEASURES
               path when it ran, or no bench (or no MEASURES) to check it against.

One line per result (the ones git tracks, as they are in the working tree); exit 1 if any is
stale or untraceable. Only git and the standard library: nothing is imported from the benches.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELPERS = frozenset({"common", "peers", "provenance", "status"})  # bench/*.py that are not benches


@dataclass(frozen=True)
class Verdict:
    result: str  # the result's path, relative to the repository
    state: str  # "fresh", "stale" or "untraceable"
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.result}: {self.state}" + (f" ({self.detail})" if self.detail else "")


def bench_names(root: Path) -> list[str]:
    """The benches: bench/*.py other than the shared helpers."""
    return sorted(p.stem for p in (root / "bench").glob("*.py") if p.stem not in HELPERS | {"__init__"})


def bench_for(result_stem: str, names: Iterable[str]) -> str | None:
    """The bench a result belongs to: NAME for NAME.json and NAME_SUFFIX.json, the longest NAME winning."""
    for name in sorted(names, key=len, reverse=True):
        if result_stem == name or result_stem.startswith(name + "_"):
            return name
    return None


def measures(bench_file: Path, result_stem: str | None = None) -> tuple[str, ...] | None:
    """What a result of the bench measures, read without importing it: its `RESULT_MEASURES[result_stem]`
    when it declares one (a result another tool writes under its name), else its `MEASURES` (None: neither)."""
    values = _module_literals(bench_file)
    own = (values.get("RESULT_MEASURES") or {}).get(result_stem)
    declared = own if own is not None else values.get("MEASURES")
    return None if declared is None else tuple(declared)


def _module_literals(path: Path) -> dict:
    """Module-level `NAME = literal` assignments; a literal may name an earlier one (`{"x": PATHS}`)."""
    nodes: dict[str, ast.expr] = {}
    values: dict = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            inlined = _Inline(nodes).visit(node.value)
            try:
                values[node.targets[0].id] = ast.literal_eval(inlined)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                continue
            nodes[node.targets[0].id] = inlined
    return values


class _Inline(ast.NodeTransformer):
    def __init__(self, nodes: dict[str, ast.expr]) -> None:
        self.nodes = nodes

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return self.nodes.get(node.id, node)


def recorded(report: dict) -> tuple[str | None, list[str] | None]:
    """The commit a result records, and the uncommitted paths it ran with ([]: none, None: dirty, paths unknown).
    Before "provenance", bench/fuzz.py wrote top-level "commit" and "uncommitted_changes"."""
    git = (report.get("provenance") or {}).get("git") or {}
    if git.get("commit"):
        return git["commit"], list(git.get("changed") or []) if git.get("dirty") else []
    return report.get("commit") or None, None if report.get("uncommitted_changes") else []


def check(result: Path, root: Path) -> Verdict:
    """Fresh, stale or untraceable: `result` against its bench's MEASURES and git history."""
    rel = result.relative_to(root).as_posix()
    name = bench_for(result.stem, bench_names(root))
    if name is None:
        return Verdict(rel, "untraceable", f"no bench/NAME.py for {result.name}")
    paths = measures(root / "bench" / f"{name}.py", result.stem)
    if not paths:
        return Verdict(rel, "untraceable", f"bench/{name}.py declares no MEASURES")
    missing = [p for p in paths if not (root / p).exists()]
    if missing:
        return Verdict(rel, "untraceable", f"bench/{name}.py MEASURES paths that do not exist: {', '.join(missing)}")
    try:
        commit, dirty = recorded(json.loads(result.read_text()))
    except (OSError, ValueError, AttributeError) as err:
        return Verdict(rel, "untraceable", f"not a JSON object: {err}")
    return _against_history(rel, commit, dirty, paths, root)


def _against_history(rel: str, commit: str | None, dirty: list[str] | None, paths: Sequence[str],
                     root: Path) -> Verdict:
    if not commit:
        return Verdict(rel, "untraceable", "no commit recorded")
    if not all(c in "0123456789abcdef" for c in commit.lower()):
        return Verdict(rel, "untraceable", f"{commit!r} is not a commit id")
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}") is None:
        return Verdict(rel, "untraceable", f"commit {commit[:7]} unknown to git")
    if dirty is None:
        return Verdict(rel, "untraceable", f"measured at {commit[:7]} with uncommitted changes (paths not recorded)")
    touched = _declared(dirty, paths)
    if touched:
        return Verdict(rel, "untraceable", f"measured at {commit[:7]} with uncommitted changes to {', '.join(touched)}")
    last = _git(root, "log", "-1", "--format=%H", "--", *paths)
    if not last:
        return Verdict(rel, "untraceable", f"no commit has {', '.join(paths)}")
    if _git(root, "merge-base", "--is-ancestor", last, commit) is not None:
        return Verdict(rel, "fresh")
    changed = (_git(root, "log", "--format=", "--name-only", f"{commit}..HEAD", "--", *paths) or "").split()
    return Verdict(rel, "stale", f"measured at {commit[:7]}, {', '.join(_declared(changed, paths)) or 'MEASURES'} "
                                 f"changed since in {last[:7]}")


def _declared(files: Iterable[str], paths: Sequence[str]) -> list[str]:
    """The MEASURES entries that any of `files` lies in (or is)."""
    files = list(files)
    return [p for p in paths if any(f == p or f.startswith(p.rstrip("/") + "/") for f in files)]


def statuses(root: Path = ROOT) -> list[Verdict]:
    """A verdict for every result git tracks under bench/results/*.json."""
    tracked = (_git(root, "ls-files", "--", "bench/results/*.json") or "").splitlines()
    return [check(root / path, root) for path in tracked if (root / path).is_file()]


def _git(root: Path, *args: str) -> str | None:
    """git's stdout, or None when it exits non-zero."""
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    verdicts = statuses(args.root.resolve())
    for verdict in verdicts:
        print(verdict)
    return 0 if all(v.state == "fresh" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
