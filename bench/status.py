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
  stale        a MEASURES path changed in a later commit, and the code it names is not the same
               as at the measured commit (see below);
  untraceable  no commit recorded, a commit git does not know, uncommitted changes to a MEASURES
               path when it ran, or no bench (or no MEASURES) to check it against.

"The same code" is judged after a MEASURES path changed: each MEASURES entry now is paired with
the entry at the same position in the bench's MEASURES at the measured commit (so a folder that
moved pairs with where it was), the files under each pair must have the same names, and each
Python file the same syntax tree, up to formatting, comments, docstrings and the order of a run of
import statements (the bench's own MEASURES declarations aside); other files byte for byte. A
result so checked is "fresh (the same code since <commit>: formatting, comments or moves)".

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
    return measures_in(bench_file.read_text(), result_stem)


def measures_in(source: str, result_stem: str | None = None) -> tuple[str, ...] | None:
    """`measures` of a bench's source text."""
    values = _module_literals(source)
    own = (values.get("RESULT_MEASURES") or {}).get(result_stem)
    declared = own if own is not None else values.get("MEASURES")
    return None if declared is None else tuple(declared)


def _module_literals(source: str) -> dict:
    """Module-level `NAME = literal` assignments; a literal may name an earlier one (`{"x": PATHS}`)."""
    nodes: dict[str, ast.expr] = {}
    values: dict = {}
    for node in ast.parse(source).body:
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


def _against_history(
    rel: str, commit: str | None, dirty: list[str] | None, paths: Sequence[str], root: Path
) -> Verdict:
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
    if same_code(root, commit, Path(rel).stem, paths):
        return Verdict(rel, "fresh", f"the same code since {commit[:7]}: formatting, comments, docstrings or moves")
    changed = (_git(root, "log", "--format=", "--name-only", f"{commit}..HEAD", "--", *paths) or "").split()
    return Verdict(
        rel,
        "stale",
        f"measured at {commit[:7]}, {', '.join(_declared(changed, paths)) or 'MEASURES'} changed since in {last[:7]}",
    )


def same_code(root: Path, commit: str, result_stem: str, paths: Sequence[str]) -> bool:
    """Whether the files under `paths` at HEAD are the code that was under the result's MEASURES at `commit`."""
    bench = f"bench/{bench_for(result_stem, bench_names(root))}.py"
    then_source = _git(root, "show", f"{commit}:{bench}")
    then_paths = measures_in(then_source, result_stem) if then_source is not None else None
    if then_paths is None or len(then_paths) != len(paths):
        return False
    return all(_same_tree(root, commit, old, new) for old, new in zip(then_paths, paths))


def _same_tree(root: Path, commit: str, old: str, new: str) -> bool:
    old_files, new_files = _files_under(root, commit, old), _files_under(root, "HEAD", new)
    if old_files is None or new_files is None or set(old_files) != set(new_files):
        return False
    return all(
        _normalised(_git(root, "show", f"{commit}:{old_files[name]}"), name)
        == _normalised(_git(root, "show", f"HEAD:{new_files[name]}"), name)
        for name in old_files
    )


def _files_under(root: Path, rev: str, path: str) -> dict[str, str] | None:
    """Files under `path` at `rev`, by their name relative to it (a file: its own name)."""
    listed = _git(root, "ls-tree", "-r", "--name-only", rev, "--", path)
    if not listed:
        return None
    base = path.rstrip("/")
    return {(f[len(base) + 1 :] if f != base else Path(f).name): f for f in listed.splitlines()}


def _normalised(text: str | None, name: str) -> str | None:
    """A Python file's syntax tree without formatting, comments, docstrings, MEASURES declarations or the
    order of a run of imports; another file as it is."""
    if text is None or not name.endswith(".py"):
        return text
    try:
        tree = _without_docstrings(ast.parse(text))
    except SyntaxError:
        return text
    declared = _declaration_names(tree)
    body = [
        node
        for node in tree.body
        if not (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and getattr(node.targets[0], "id", None) in declared
        )
    ]
    return "\n".join(_sorted_import_runs(body))


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """`tree` without the docstrings of the module, its classes and functions (text that runs nowhere)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def _declaration_names(tree: ast.Module) -> set[str]:
    """MEASURES, RESULT_MEASURES and the module-level names they are built from."""
    declared = {"MEASURES", "RESULT_MEASURES"}
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in {"MEASURES", "RESULT_MEASURES"}:
            declared |= {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
    return declared


def _sorted_import_runs(nodes: list[ast.stmt]) -> list[str]:
    """The statements' dumps, each run of consecutive imports in sorted order."""
    out: list[str] = []
    run: list[str] = []
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            run.append(ast.dump(node))
            continue
        out += sorted(run) + [ast.dump(node)]
        run = []
    return out + sorted(run)


def _declared(files: Iterable[str], paths: Sequence[str]) -> list[str]:
    """The MEASURES entries that any of `files` lies in (or is)."""
    files = list(files)
    return [p for p in paths if any(f == p or f.startswith(p.rstrip("/") + "/") for f in files)]


def statuses(root: Path = ROOT) -> list[Verdict]:
    """A verdict for every result git tracks under bench/results/*.json."""
    tracked = (_git(root, "ls-files", "--", "bench/results/*.json") or "").splitlines()
    return [check(root / path, root) for path in tracked if (root / path).is_file()]


def _git(root: Path, *args: str) -> str | None:
    """git's stdout, or None when it exits non-zero. Bytes that are not UTF-8 (a binary file under a
    MEASURES path: l2o's weights) become surrogates, so two versions still compare byte for byte."""
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, errors="surrogateescape")
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
