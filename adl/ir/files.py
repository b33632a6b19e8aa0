"""Writing the compiler's files safely: atomically, in private folders, under a lock.

Every file adl writes that another process (or a rerun after a kill) may read goes through
`atomic_path` (or `atomic_write_bytes` / `atomic_write_text`): the content is written to a
uniquely named temporary file in the same folder, flushed to disk, then renamed over the
target, and the folder is flushed too. A reader sees the old file or the new one, never half
of one, and two processes writing the same file at once do not collide on a temporary name.

`private_dir` creates a cache folder 0700 and refuses one that another user owns or can
write to (`UnsafeDirectory`): what lies in a cache is trusted on the next compile.
`output_lock` serialises compiles of one output folder; `exchange` swaps two paths atomically
(Linux ``renameat2(RENAME_EXCHANGE)``).

Only the standard library: every layer below `adl/` may import this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

PathLike = str | os.PathLike[str]


class UnsafeDirectory(Exception):
    """A folder adl would trust that another user owns or may write to."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    with contextlib.suppress(OSError, ValueError, StopIteration):  # Linux: read it without changing it
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode a plain ``open(path, "w")`` (or ``mkdir``) would give: 0666 (0777) less the umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def fsync_dir(folder: PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, mode: int | None = None) -> Iterator[Path]:
    """A fresh temporary path beside `path` (same suffix, for writers that pick a format by it:
    ``np.savez``, ``export_library``) to write to; on a clean exit it replaces `path`, on an
    error it is removed. `mode`: the file's permissions (default: as a new file would get)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, default_mode() if mode is None else mode)
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes, mode: int | None = None) -> None:
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str, mode: int | None = None) -> None:
    with atomic_path(path, mode) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# -- private folders -------------------------------------------------------------------------


def check_private(path: PathLike) -> None:
    """Raise `UnsafeDirectory` unless `path` is a folder owned by this user that no one else may
    write to (nor re-point, when it is a symbolic link)."""
    link = os.lstat(path)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, os.geteuid()):
        raise UnsafeDirectory(path, f"is a symbolic link owned by {_user(link.st_uid)}, not by you")
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(path, "is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeDirectory(
            path,
            f"is owned by {_user(st.st_uid)}, not by you ({_user(os.geteuid())}); "
            "adl trusts what a cache holds, so it uses only one of yours",
        )
    if st.st_mode & 0o022:
        raise UnsafeDirectory(
            path,
            f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"make it private (chmod 700 {path}) or choose another",
        )


def private_dir(path: PathLike) -> Path:
    """`path` as a folder only this user may write to: created 0700 if missing, else checked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    check_private(path)
    return path


def _user(uid: int) -> str:
    try:
        import pwd

        return f"user '{pwd.getpwuid(uid).pw_name}' (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


# -- locks -------------------------------------------------------------------------------------

_held: dict[str, list[int]] = {}  # lock file -> [its descriptor, how many times this process entered it]
_held_guard = threading.Lock()


def _forget_locks_in_child() -> None:
    """A forked child closes its copies of the lock descriptors: a flock lasts while any copy is
    open, so a child outliving its parent's compile would otherwise keep the output locked."""
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


def lock_path(out_dir: PathLike) -> Path:
    """The lock file of an output folder: ``.NAME.lock`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.lock"


@contextlib.contextmanager
def output_lock(out_dir: PathLike, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold the exclusive lock of `out_dir` (``fcntl.flock`` on its lock file) for the block;
    `on_wait` is called first if another process holds it. Re-entrant within a process."""
    path = lock_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.parent.resolve() / path.name)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
        else:
            _held[key] = [_acquire(path, on_wait), 1]
    try:
        yield
    finally:
        with _held_guard:
            entry = _held.get(key)
            if entry is not None:  # (None in a forked child, which dropped its copies)
                entry[1] -= 1
                if entry[1] == 0:
                    del _held[key]
                    # removed while still held, so no lock file outlives the compile; a waiter
                    # that locks the removed file notices and starts over (`_acquire`)
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    os.close(entry[0])  # releases the flock


def _acquire(path: Path, on_wait: Callable[[], None]) -> int:
    """The descriptor of `path`, locked; retried while the file we locked is not the one at
    `path` any more (its holder removed it on release: the lock moved to a new file)."""
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    on_wait()
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


# -- atomic exchange ---------------------------------------------------------------------------

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


@functools.lru_cache(maxsize=1)
def _renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange(a: PathLike, b: PathLike) -> bool:
    """Swap the two existing paths `a` and `b` in one atomic step; False (nothing done) where the
    system or file system cannot (not Linux, an old kernel or libc, a file system without it)."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))
