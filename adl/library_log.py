"""Where the libraries' own messages go during `adl compile`: a log file, not the terminal.

TVM's C++ logging (``LOG(WARNING)``, e.g. "Creating JSONDatabase. Workload at: ...") writes
straight to file descriptor 2, in this process and in the worker processes it starts
(MetaSchedule's builders and runners, the latency table's compile workers), which inherit
that descriptor; MetaSchedule's Python loggers, jax's logging and torch's deprecation warnings
go through Python. While a `LibraryLog` is open, descriptor 2 and `sys.stderr` point at the
log file, so all of these land there, and adl's own output -- progress, results, its warnings
-- goes to the `terminal` it returns: the process's stderr as it was.

Warnings are sorted by what they are: a deprecation (`DeprecationWarning`,
`PendingDeprecationWarning`, `FutureWarning`) is a library's business unless its text starts
with "adl:"; every other warning is shown on the terminal (and copied into the log).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import TextIO

LIBRARY_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def is_library_warning(message: Warning | str, category: type[Warning]) -> bool:
    """A deprecation raised by a library (torch, jax, TVM), not a warning of adl's ("adl: ...")."""
    return issubclass(category, LIBRARY_CATEGORIES) and not str(message).startswith("adl:")


class LibraryLog:
    """A context manager: the libraries' output into `path` (appended), adl's to the terminal.

    `path`'s folder is created private (0700) if missing; the file is created 0600. A log
    that nothing was written to is removed on exit, with its folder if that is left empty.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lines = 0  # lines in the log when it was closed
        self._log: TextIO | None = None
        self._terminal: TextIO | None = None
        self._own_terminal = False
        self._saved_fd = -1
        self._saved_stderr: TextIO | None = None
        self._saved_showwarning = None

    def __enter__(self) -> TextIO:
        from adl.ir.files import private_dir

        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._terminal, self._own_terminal = _terminal_stream()
        _flush(sys.stdout, sys.stderr)
        self._saved_fd = os.dup(2)
        os.dup2(fd, 2)  # inheritable: the worker processes started from here write to the log too
        self._log = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
        self._saved_stderr, sys.stderr = sys.stderr, self._log
        self._saved_showwarning, warnings.showwarning = warnings.showwarning, self._show_warning
        return self._terminal

    def __exit__(self, *exc) -> None:
        warnings.showwarning = self._saved_showwarning
        sys.stderr = self._saved_stderr
        _flush(sys.stdout, self._log)
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        empty = os.fstat(self._log.fileno()).st_size == 0  # of the file we wrote, whatever its name now
        self._log.close()
        if self._own_terminal:
            self._terminal.close()
        else:
            _flush(self._terminal)
        try:
            self.lines = 0 if empty else _count_lines(self.path)
            if empty:
                self.path.unlink()
                _remove_if_empty(self.path.parent)
        except FileNotFoundError:  # removed meanwhile (by the user): nothing to count or clean
            self.lines = 0

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        self._log.write(text)
        if file is not None:
            file.write(text)
        elif not is_library_warning(message, category):
            self._terminal.write(text)
            self._terminal.flush()


def _terminal_stream() -> tuple[TextIO, bool]:
    """Where adl's own messages go while descriptor 2 is the log: `sys.stderr` itself when it does
    not write to descriptor 2 (a test's capture), else a stream on a duplicate of descriptor 2
    (True: ours to close)."""
    stream = sys.stderr
    try:
        on_fd2 = stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        on_fd2 = False
    if not on_fd2:
        return stream, False
    stream.flush()
    fd = os.dup(2)
    return os.fdopen(
        fd,
        "w",
        buffering=1,
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors=getattr(stream, "errors", None) or "backslashreplace",
    ), True


def _flush(*streams) -> None:
    for stream in streams:
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty, or not ours to remove
        pass
