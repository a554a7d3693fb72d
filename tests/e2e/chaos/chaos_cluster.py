"""A control plane, a worker and clients as real, separate processes, for chaos tests.

``Cluster.close`` kills every process the cluster started: clients, the server and the worker (each
by its process group), then every container process whose ``HOME`` (or socket) lives under the
cluster's home (containers put themselves in their own process group). The ``cluster`` fixture in
conftest.py removes the home afterwards. Homes live directly under the system temp dir because
container sockets (``HOME/worker/containers/<id>/vivace.sock``) must fit in a unix socket path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from tests.kernel_clock import alive as _alive

ROOT = Path(__file__).resolve().parents[3]
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
VIVACE = [str(VENV_BIN / "vivace")] if (VENV_BIN / "vivace").exists() else [PYTHON, "-m", "vivace.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIVACE_", "MODAL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _environ_of(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


class Cluster:
    """One control plane (``vivace server``), optionally one worker, and client scripts, all as processes."""

    def __init__(self, home: Path, store_url: str | None = None, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.store_url = store_url  # None: SQLite in home; a postgresql:// URL for replicas on one database
        self.extra_env = env or {}  # added to the server's environment (VIVACE_SECRET_KEY for replicas)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.server: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.clients: list[subprocess.Popen[bytes]] = []
        self.creds: dict[str, str] = {}
        self.server_starts = 0
        self.worker_starts = 0

    # -- processes -------------------------------------------------------------------------------
    def _spawn(
        self, argv: list[str], log_name: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.logs / log_name, "ab") as logf:
            return subprocess.Popen(
                argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env or _clean_env(),
                cwd=str(cwd or self.home),
                start_new_session=True,
            )

    def start_server(self, timeout: float = 30.0) -> None:
        assert self.server is None or self.server.poll() is not None, "the server is already running"
        self.server_starts += 1
        store = ["--store", self.store_url] if self.store_url else []
        self.server = self._spawn(
            [*VIVACE, "server", "--home", str(self.home), "--port", str(self.port), *store],
            f"server-{self.server_starts}.log",
            env={**_clean_env(), **self.extra_env},
        )

        def up() -> bool:
            assert self.server is not None
            if self.server.poll() is not None:
                code = self.server.returncode
                raise AssertionError(f"the server exited with {code}:\n{self.log_tail('server')}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout, "the control plane to answer /healthz", interval=0.05)
        self.creds = json.loads((self.home / "credentials.json").read_text())

    def kill_server(self) -> None:
        """``kill -9`` the control plane."""
        assert self.server is not None and self.server.poll() is None, "the server is not running"
        os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait(10)

    @property
    def worker_dir(self) -> Path:
        return self.home / "worker"

    def worker_id(self) -> str | None:
        with contextlib.suppress(OSError, ValueError):
            return str(json.loads((self.worker_dir / "state.json").read_text())["worker_id"])
        return None

    def start_worker(self, timeout: float = 30.0) -> str:
        """Start the worker (same ``--dir`` every time) and wait until it has registered; returns its id."""
        assert self.worker is None or self.worker.poll() is not None, "the worker is already running"
        before = self.worker_id()
        self.worker_starts += 1
        token = f"{self.creds['worker_token_id']}:{self.creds['worker_token_secret']}"
        self.worker = self._spawn(
            [
                *VIVACE,
                "worker",
                "--server",
                self.url,
                "--token",
                token,
                "--dir",
                str(self.worker_dir),
                "--cpu",
                "2",
                "--memory",
                "4096",
                "--name",
                f"chaos-{self.worker_starts}",
                # these tests are about durability of the call path and share files with their functions
                "--runtimes",
                "process",
            ],
            f"worker-{self.worker_starts}.log",
        )

        def registered() -> str | None:
            assert self.worker is not None
            if self.worker.poll() is not None:
                code = self.worker.returncode
                raise AssertionError(f"the worker exited with {code}:\n{self.log_tail('worker')}")
            wid = self.worker_id()
            return wid if wid and wid != before else None

        return str(wait_until(registered, timeout, "the worker to register", interval=0.05))

    def kill_worker(self) -> None:
        """``kill -9`` the worker (its process group; containers have their own and die by PDEATHSIG)."""
        assert self.worker is not None and self.worker.poll() is None, "the worker is not running"
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(10)

    def container_pids(self) -> dict[int, str]:
        """Live container processes of this cluster: ``{pid: VIVACE_TASK_ID}``."""
        out = {}
        prefix = str(self.home) + "/"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            env = _environ_of(pid) or {}
            # the process runtime sets HOME to the container's directory under the worker's --dir; the
            # socket is there too unless that path is too long for a unix socket
            mine = env.get("HOME", "").startswith(prefix) or env.get("VIVACE_SOCKET", "").startswith(prefix)
            if env.get("VIVACE_TASK_ID") and mine and _alive(pid):
                out[pid] = env["VIVACE_TASK_ID"]
        return out

    def client_env(self) -> dict[str, str]:
        env = _clean_env()
        env.update(
            {
                "VIVACE_SERVER_URL": self.url,
                "VIVACE_TOKEN_ID": self.creds["token_id"],
                "VIVACE_TOKEN_SECRET": self.creds["token_secret"],
                "VIVACE_HOME": str(self.home / "client"),
                "VIVACE_CONFIG_PATH": str(self.home / "no-such-config.toml"),
            }
        )
        return env

    def run_client(self, script: Path, *args: str) -> subprocess.Popen[bytes]:
        n = len(self.clients) + 1
        proc = self._spawn(
            [PYTHON, str(script), *args], f"client-{n}.log", env=self.client_env(), cwd=script.parent
        )
        self.clients.append(proc)
        return proc

    def wait_client(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            msg = f"the client did not finish within {timeout:g} s\n{self.diagnostics()}"
            raise AssertionError(msg) from None
        assert code == 0, f"the client exited with {code}\n{self.diagnostics()}"

    # -- state -----------------------------------------------------------------------------------
    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the control plane's SQLite database (safe while the server runs: WAL)."""
        conn = sqlite3.connect(f"file:{self.home / 'vivace.db'}?mode=ro", uri=True, timeout=30)
        try:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def api(self) -> httpx.Client:
        from vivace._version import __version__
        from vivace.protocol.versions import VERSION_HEADER

        return httpx.Client(
            base_url=self.url,
            timeout=30.0,
            headers={
                "authorization": f"Bearer {self.creds['token_id']}:{self.creds['token_secret']}",
                VERSION_HEADER: __version__,
            },
        )

    def log_tail(self, prefix: str, lines: int = 40) -> str:
        out = []
        for p in sorted(self.logs.glob(f"{prefix}*.log")):
            text = p.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {p.name} ---\n" + "\n".join(text))
        return "\n".join(out)

    def diagnostics(self) -> str:
        parts = [self.log_tail("client"), self.log_tail("worker"), self.log_tail("server")]
        with contextlib.suppress(Exception):
            by_state = self.query("SELECT state, COUNT(*) FROM inputs GROUP BY state")
            parts.append(f"inputs by state: {by_state!r}")
            parts.append(
                "calls: " + repr(self.query("SELECT id, inputs_total, inputs_added, outputs_done FROM calls"))
            )
            parts.append(
                "containers: "
                + repr(self.query("SELECT id, worker_id, state, held, served, stop_reason FROM containers"))
            )
        return "\n".join(parts)

    # -- teardown --------------------------------------------------------------------------------
    def close(self) -> list[int]:
        """Kill everything this cluster started; returns container pids that had to be killed here."""
        for proc in [*self.clients, self.worker, self.server]:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        # containers die with their worker (PDEATHSIG); give them a moment, then kill what is left
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not self.container_pids(), 5.0, "containers to exit", interval=0.05)
        leftovers = sorted(self.container_pids())
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not self.container_pids(), 5.0, "leftovers to die", interval=0.05)
        return leftovers
