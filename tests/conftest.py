"""Fixtures shared across the test folders.

Every test runs with ``ADL_CACHE_DIR`` and ``ADL_KEY_DIR`` pointing at private folders, so the
user's roofline calibrations, latency tables and cache key neither leak into nor get written by
the tests.

`servers`: on loopback, a TVM RPC tracker with one RPC server registered under the key
"board", and a second RPC server reached directly (no tracker), as subprocesses of their own
process groups (killed at teardown). The servers run with torch hidden, as on a device that
has only the TVM runtime (and because importing torch would slow their start by seconds).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# One XLA compilation cache for the whole run, this process and the compiles it starts: the nas
# tests and the e2e compiles jit the same small programs again and again (a cold cache shared
# this way cut the tiny-search tests from 149 s to 116 s). Fresh per run, removed at exit.
_JAX_CACHE = tempfile.mkdtemp(prefix="adl-test-jax-cache-")
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
os.environ.update(
    JAX_COMPILATION_CACHE_DIR=_JAX_CACHE,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
)
# XLA:CPU's LLVM backend at -O0 (this process and the compiles it starts; a level already in XLA_FLAGS
# stands). The JAX tests compile far more than they run: at -O0 the darts e2e search compiled in 45 s
# instead of 60 s (its 2 epochs then ran in 11 s instead of 4), tests/passes/test_nas.py took 117 s
# instead of 155 s and test_l2o.py 52 s instead of 99 s (2 cores). The programs compute the same
# results up to rounding (e.g. whether a multiply-add is fused), which every tolerance here allows
# for: each is derived to hold across CPUs, whose vector units round differently (tests/README.md),
# and so is every accuracy bound.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"])
    )
# torch's OpenMP threads sleep at a barrier instead of spinning (unless OMP_WAIT_POLICY is set). The
# compiles train with the target's cores (2) threads; with another process busy on one of the 2 cores,
# a spinning thread burns the time slice its partner needs: an epoch of the darts e2e test's cell
# network took 10-35 s instead of 0.6-1.5 s. On an idle machine it took 0.6 s either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BOOT_TIMEOUT_S = 60.0  # starting a tracker or server: a few seconds normally
SERVER_THREADS = 2  # TVM_NUM_THREADS of the RPC servers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class RpcServers:
    """A tracker with a server under key "board", and a direct server, started at once;
    :meth:`tracker` and :meth:`direct` wait (bounded) until they are ready."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        stub = root / "no_torch"
        stub.mkdir()
        (stub / "torch.py").write_text('raise ImportError("torch is hidden in this RPC test server")\n')
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub), os.environ.get("PYTHONPATH")]))
        self.env["TVM_NUM_THREADS"] = str(SERVER_THREADS)
        self.threads = SERVER_THREADS
        self.tracker_port = _free_port()
        self.direct_port = _free_port()
        self.board_port = _free_port()
        self._start("tracker", "tvm.exec.rpc_tracker", self.tracker_port)
        self._start("direct", "tvm.exec.rpc_server", self.direct_port)
        self._tracker_ready = self._direct_ready = False

    def _start(self, name: str, module: str, port: int, *extra: str, ports: int = 1) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        # --port-end: the tracker's default (9199) would be below a free port picked here
        command = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port)]
        command += ["--port-end", str(port + ports)]
        self.procs[name] = subprocess.Popen(
            [*command, *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,  # its own process group: children (sessions, workers) die with it
        )
        log.close()

    def _wait(self, what: str, ready: Callable[[], bool], names: list[str]) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not ready():
            for name in names:
                if self.procs[name].poll() is not None:
                    pytest.fail(f"the RPC {name} exited while waiting for {what}:\n{self.log(name)}")
            if time.monotonic() > deadline:
                logs = "\n".join(self.log(name) for name in names)
                pytest.fail(f"timed out after {BOOT_TIMEOUT_S:g} s waiting for {what}:\n{logs}")
            time.sleep(0.05)

    def log(self, name: str) -> str:
        return f"--- {name}.log ---\n" + (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def tracker(self) -> str:
        """The tracker's address, once a server with key "board" is registered there."""
        if not self._tracker_ready:
            pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado")
            self._wait("the tracker to listen", lambda: _accepts(self.tracker_port), ["tracker"])
            # The server retries a refused tracker only every 5 s: start it once the tracker listens.
            tracker = f"127.0.0.1:{self.tracker_port}"
            # started seconds after its port was found free: let it take the next free one of 100
            # (tests reach it through the tracker, never by its port)
            self._start(
                "board", "tvm.exec.rpc_server", self.board_port, "--tracker", tracker, "--key", "board", ports=100
            )

            def registered() -> bool:
                import tvm.rpc

                summary = tvm.rpc.connect_tracker("127.0.0.1", self.tracker_port).summary()
                return summary["queue_info"].get("board", {}).get("free", 0) >= 1

            self._wait('the server "board" to register', registered, ["tracker", "board"])
            self._tracker_ready = True
        return f"127.0.0.1:{self.tracker_port}"

    def direct(self) -> str:
        if not self._direct_ready:
            self._wait("the direct server to listen", lambda: _accepts(self.direct_port), ["direct"])
            self._direct_ready = True
        return f"127.0.0.1:{self.direct_port}"

    def stop(self) -> None:
        """SIGTERM each process group (the servers, their forked sessions, the tracker's worker),
        SIGKILL what is left after 5 s, and check that nothing of them is left."""
        for proc in self.procs.values():
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while any(_group_alive(p.pid) for p in self.procs.values()) and time.monotonic() < deadline:
            for proc in self.procs.values():
                proc.poll()  # reap the leaders
            time.sleep(0.05)
        for proc in self.procs.values():
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        deadline = time.monotonic() + 5
        while any(_group_alive(p.pid) for p in self.procs.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [name for name, p in self.procs.items() if _group_alive(p.pid)]
        assert not left, f"RPC test processes still running: {left}"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session", autouse=True)
def _private_measurement_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never read or write the user's calibrations, latency tables (~/.cache/adl) or
    cache-sealing key (~/.config/adl/cache.key)."""
    names = {"ADL_CACHE_DIR": "adl-cache", "ADL_KEY_DIR": "adl-key"}
    saved = {name: os.environ.get(name) for name in names}
    for name, folder in names.items():
        os.environ[name] = str(tmp_path_factory.mktemp(folder))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def private_key_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache-sealing key of this test's own (`ADL_KEY_DIR`), created on first use."""
    folder = tmp_path / "key"
    monkeypatch.setenv("ADL_KEY_DIR", str(folder))
    return folder


class _Planted:
    """Unpickling it creates `marker`: what the code of a pickle planted in a cache would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def planted() -> Callable[[Path], object]:
    """`planted(marker)`: an object whose pickle, when loaded, creates the file `marker`."""
    return _Planted


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RpcServers]:
    started = RpcServers(tmp_path_factory.mktemp("rpc"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    return _free_port()


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def install_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str, str], Path]]:
    """`install_example(folder, distribution)` pip-installs `examples/<folder>` into this venv
    (built in a copy, so no build/ or egg-info is left in the repo) and returns the copy; every
    distribution installed is uninstalled when the test module ends."""
    import shutil

    pip = [sys.executable, "-m", "pip"]
    installed: list[str] = []

    def install(folder: str, distribution: str) -> Path:
        source = tmp_path_factory.mktemp("plugin") / folder
        shutil.copytree(EXAMPLES / folder, source)
        subprocess.run(
            [*pip, "install", "--no-deps", "--no-build-isolation", "-q", str(source)],
            check=True,
            capture_output=True,
            text=True,
        )
        installed.append(distribution)
        return source

    yield install
    for distribution in installed:
        subprocess.run([*pip, "uninstall", "-y", "-q", distribution], check=False, capture_output=True)
