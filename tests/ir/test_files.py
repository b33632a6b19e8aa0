"""The file helpers every writer shares: atomic writes, private folders, the output lock, the
atomic exchange; and sealed pickles (refused unread unless this user's adl wrote them)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import stat
import threading
import time
from pathlib import Path

import pytest

from adl.ir import seal
from adl.ir.files import (
    UnsafeDirectory,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    default_mode,
    exchange,
    lock_path,
    output_lock,
    private_dir,
    sha256_file,
)

NOBODY = 65534


pytestmark = pytest.mark.usefixtures("private_key_dir")


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == default_mode()
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_atomic_path_keeps_the_suffix_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "w.npz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".npz" and tmp != target
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["w.npz"]
    with atomic_path(target, mode=0o600) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_two_writers_of_one_file_use_distinct_temporaries(tmp_path):
    target = tmp_path / "state.pt"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the outer one replaced last


def test_private_dir_is_created_0700_and_refuses_foreign_or_shared_folders(tmp_path):
    created = private_dir(tmp_path / "a" / "cache")
    assert stat.S_IMODE(created.stat().st_mode) == 0o700
    private_dir(created)  # an existing private folder of ours is fine

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(UnsafeDirectory, match=r"writable by other users \(mode 0777\)"):
        private_dir(shared)

    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectory, match=r"is owned by .*uid 65534.*not by you"):
        private_dir(foreign)


def _hold_lock(out: str, held: multiprocessing.Event, release: multiprocessing.Event) -> None:
    with output_lock(out):
        held.set()
        release.wait(30)


def test_output_lock_excludes_other_processes_and_is_reentrant(tmp_path):
    out = tmp_path / "out"
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(out), held, release))
    child.start()
    try:
        assert held.wait(30)
        waited: list[float] = []
        start = time.monotonic()
        threading.Timer(0.5, release.set).start()
        with output_lock(out, on_wait=lambda: waited.append(time.monotonic())):
            assert waited and time.monotonic() - start >= 0.4
            with output_lock(out):  # the same process again: no deadlock
                pass
    finally:
        release.set()
        child.join(30)
    assert lock_path(out) == tmp_path / ".out.lock"
    assert not lock_path(out).exists()  # removed on release


def test_a_waiter_on_a_lock_file_its_holder_removed_locks_the_new_one(tmp_path):
    """Three compiles: A holds; B waits on A's file; A releases and removes it; C creates a new
    one. B must notice its file is gone and contend for C's, never hold the lock beside C."""
    out = tmp_path / "out"
    # threads share the process's re-entrant table, so each contender is a process
    ctx = multiprocessing.get_context("fork")
    holders = []
    for name, delay in (("A", 0.0), ("B", 0.1), ("C", 0.35)):
        time.sleep(delay)
        holders.append(ctx.Process(target=_hold_and_record, args=(out, tmp_path / f"{name}.times", 0.4)))
        holders[-1].start()
    for process in holders:
        process.join(30)
        assert process.exitcode == 0
    spans = sorted(tuple(map(float, (tmp_path / f"{name}.times").read_text().split())) for name in "ABC")
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end  # one holder at a time
    assert not lock_path(out).exists()


def _hold_and_record(out: Path, record: Path, seconds: float) -> None:
    with output_lock(out):
        start = time.time()
        time.sleep(seconds)
        end = time.time()
    record.write_text(f"{start} {end}")


def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_sha256_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_sealed_pickles_round_trip_and_the_key_is_private(tmp_path):
    seal.dump({"a": [1, 2]}, tmp_path / "s.pkl")
    assert seal.load(tmp_path / "s.pkl") == {"a": [1, 2]}
    key = tmp_path / "key" / seal.KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "s.pkl").stat().st_mode) == 0o600


def test_a_planted_pickle_is_refused_before_it_is_unpickled(tmp_path, monkeypatch, planted):
    marker, path = tmp_path / "marker", tmp_path / "s.pkl"
    path.write_bytes(pickle.dumps(planted(marker)))  # unsealed
    with pytest.raises(seal.BadSeal):
        seal.load(path)
    path.write_bytes(seal.MAGIC + b"\0" * 32 + pickle.dumps(planted(marker)))  # a forged seal
    with pytest.raises(seal.BadSeal):
        seal.load(path)
    monkeypatch.setenv("ADL_KEY_DIR", str(tmp_path / "another users key"))
    seal.dump(planted(marker), path)  # sealed, but with another key
    monkeypatch.setenv("ADL_KEY_DIR", str(tmp_path / "key"))
    with pytest.raises(seal.BadSeal):
        seal.load(path)
    assert not marker.exists()

    seal.dump([1], path)
    blob = bytearray(path.read_bytes())
    blob[-2] ^= 1  # one bit of the payload changed
    path.write_bytes(bytes(blob))
    with pytest.raises(seal.BadSeal):
        seal.load(path)


def test_a_key_others_can_read_is_refused(tmp_path):
    seal.secret_key()
    key = tmp_path / "key" / seal.KEY_FILE
    os.chmod(key, 0o644)
    seal._keys.clear()
    with pytest.raises(seal.UnsafeKey, match=r"readable by other users \(mode 0644\)"):
        seal.secret_key()
    os.chmod(key, 0o600)
    os.chmod(key.parent, 0o777)
    with pytest.raises(seal.UnsafeKey, match="writable by other users"):
        seal.secret_key()
