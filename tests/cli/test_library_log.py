"""`adl compile` shows adl's progress, results and warnings; TVM's, torch's and jax's own messages
go to ``<cache>/logs/<out name>-<date>-<time>.log`` unless `-v` (adl/library_log.py)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from adl.cli import main
from adl.ir.module import Module
from adl.ir.passes import Pass, PassContext, PassError, default_registry
from adl.library_log import LibraryLog

SPEC = """spec mini
task classify { classes = 10 }
data digits { split = 0.8  seed = 0 }
model mlp(hidden = [16])
target host { kind = llvm  cores = 1 }
pipeline { noisy }
"""

CHILD = "import sys; sys.stderr.write('a worker process writes to the stderr it inherited\\n')"


def tvm_warns_from_cpp(work_dir: Path) -> None:
    """TVM's C++ LOG(WARNING) "Creating JSONDatabase. Workload at: ...", written to fd 2, as the
    tuned lowering and the latency table's compile workers do."""
    import tvm
    from tvm import relax
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Tiny:
        @R.function
        def main(x: R.Tensor((4,), "float32")) -> R.Tensor((4,), "float32"):
            return x

    with tvm.target.Target({"kind": "llvm"}), tvm.transform.PassContext(opt_level=3):
        relax.transform.MetaScheduleApplyDatabase(str(work_dir))(Tiny)


def torch_warns_a_deprecation() -> None:
    """torch 2.13's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated", attributed to
    copyreg.py: what copying an exported module raises."""
    import torch

    exported = torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)).module()
    copy.deepcopy(exported)


class NoisyPass(Pass):
    name = "noisy"
    summary = "makes the noise of the libraries a compile uses, and warns as adl does"

    def run(self, module: Module, ctx: PassContext) -> Module:
        (ctx.work_dir / "tuning").mkdir(exist_ok=True)
        tvm_warns_from_cpp(ctx.work_dir / "tuning")
        torch_warns_a_deprecation()
        subprocess.run([sys.executable, "-c", CHILD], check=True)
        warnings.warn("adl: a warning of adl's own", stacklevel=2)
        return module


@pytest.fixture
def noisy_spec(tmp_path, monkeypatch):
    monkeypatch.setitem(default_registry()._classes, "noisy", NoisyPass)
    spec = tmp_path / "mini.adl"
    spec.write_text(SPEC)
    return spec


def the_log(folder: Path) -> Path:
    logs = list((folder / ".adl-cache" / "logs").glob("out-*.log"))
    assert len(logs) == 1, logs
    return logs[0]


def test_the_libraries_messages_go_to_the_log_and_adls_warning_to_the_terminal(noisy_spec, tmp_path, capfd):
    assert main(["compile", str(noisy_spec), "-o", str(tmp_path / "out")]) == 0
    err = capfd.readouterr().err
    assert "Creating JSONDatabase" not in err and "FutureWarning" not in err and "worker process" not in err
    assert "adl: a warning of adl's own" in err and "done noisy" in err
    log = the_log(tmp_path)
    text = log.read_text()
    assert "Creating JSONDatabase" in text and "FutureWarning" in text and "LeafSpec" in text
    assert "a worker process writes to the stderr it inherited" in text
    assert f"libraries' messages ({len(text.splitlines())} lines): {log}" in err
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def show_warnings_as_python_does(monkeypatch) -> None:
    """Outside pytest, which records warnings instead: as text on sys.stderr."""

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)


def test_verbose_shows_the_libraries_messages_and_writes_no_log(noisy_spec, tmp_path, capfd, monkeypatch):
    show_warnings_as_python_does(monkeypatch)
    assert main(["compile", str(noisy_spec), "-o", str(tmp_path / "out"), "-v"]) == 0
    err = capfd.readouterr().err
    assert "Creating JSONDatabase" in err and "FutureWarning" in err and "worker process" in err
    assert "adl: a warning of adl's own" in err
    assert not (tmp_path / ".adl-cache" / "logs").exists()


def test_quiet_does_not_name_the_log(noisy_spec, tmp_path, capfd):
    assert main(["compile", str(noisy_spec), "-o", str(tmp_path / "out"), "-q"]) == 0
    err = capfd.readouterr().err
    assert "libraries' messages" not in err and "Creating JSONDatabase" not in err
    assert "Creating JSONDatabase" in the_log(tmp_path).read_text()


class FailingNoisyPass(NoisyPass):
    def run(self, module: Module, ctx: PassContext) -> Module:
        super().run(module, ctx)
        raise PassError("noisy: gave up")


def test_a_failed_compile_names_the_log_even_when_quiet(noisy_spec, tmp_path, capfd, monkeypatch):
    monkeypatch.setitem(default_registry()._classes, "noisy", FailingNoisyPass)
    assert main(["compile", str(noisy_spec), "-o", str(tmp_path / "out"), "-q"]) == 3
    err = capfd.readouterr().err
    assert "noisy: gave up" in err and "libraries' messages (" in err and str(the_log(tmp_path)) in err
    assert "Creating JSONDatabase" not in err


def test_a_compile_without_library_messages_keeps_no_log(tmp_path, capfd):
    spec = tmp_path / "mini.adl"
    spec.write_text(SPEC.replace("pipeline { noisy }", "pipeline { train { epochs = 1 } }"))
    assert main(["compile", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert "libraries' messages" not in capfd.readouterr().err
    assert not (tmp_path / ".adl-cache" / "logs").exists()


def test_the_log_takes_fd_2_python_stderr_and_library_deprecations(tmp_path, capfd):
    log = LibraryLog(tmp_path / "logs" / "x.log")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with log as terminal:
            os.write(2, b"from C: fd 2\n")
            print("from Python: sys.stderr", file=sys.stderr)
            subprocess.run([sys.executable, "-c", CHILD], check=True)
            warnings.warn("a library's deprecation", FutureWarning, stacklevel=1)
            warnings.warn("a library's other deprecation", DeprecationWarning, stacklevel=1)
            warnings.warn("adl: one of adl's", FutureWarning, stacklevel=1)
            warnings.warn("a runtime problem", RuntimeWarning, stacklevel=1)
            terminal.write("adl's progress\n")
    err = capfd.readouterr().err
    assert "fd 2" not in err and "sys.stderr" not in err and "inherited" not in err and "library's" not in err
    assert "adl's progress" in err and "adl: one of adl's" in err and "a runtime problem" in err
    text = log.path.read_text()
    for line in (
        "from C: fd 2",
        "from Python: sys.stderr",
        "inherited",
        "a library's deprecation",
        "a library's other deprecation",
        "adl: one of adl's",
        "a runtime problem",
    ):
        assert line in text
    assert log.lines == len(text.splitlines())
    os.write(2, b"after\n")  # fd 2 and sys.stderr are back
    print("after too", file=sys.stderr)
    assert capfd.readouterr().err == "after\nafter too\n"


def test_two_logs_on_one_path_close_cleanly_whichever_removes_it(tmp_path):
    """Two compiles of one output started in the same second once shared a log name: the first
    to finish removed the empty file and the second crashed on it. Names now carry the pid, and
    a log removed under a LibraryLog is no error."""
    path = tmp_path / "logs" / "out.log"
    with LibraryLog(path) as outer_terminal:
        with LibraryLog(path):
            pass  # nothing written: removes the file the outer log also holds
        assert not path.exists()
    assert outer_terminal is not None and not path.exists()
