"""``LocalCluster``: the real control plane (ASGI app served in a background thread of this process)
plus a real worker agent in a subprocess, for integration tests of vivace and of users' apps."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from vivace.server.config import ServerConfig
from vivace.server.main import bootstrap_tokens, free_port
from vivace.server.plane import ControlPlane


class LocalCluster:
    def __init__(
        self,
        home: Path,
        *,
        worker_cpu: float = 2.0,
        worker_memory: int = 4096,
        tick: float = 0.5,
        store_url: str | None = None,
        runtimes: list[str] | None = None,
        pids_limit: int | None = None,
        worker_env: dict[str, str] | None = None,
        warm_pool: int | None = None,
        sandbox_pool: int | None = None,
        worker_user: int | None = None,
        worker_wrapper: list[str] | None = None,
    ) -> None:
        self.warm_pool = warm_pool
        self.sandbox_pool = sandbox_pool
        self.worker_user = worker_user  # uid the worker runs as (None: this process's)
        self.worker_wrapper = worker_wrapper or []  # argv the worker runs under, as this process's user
        self.runtimes = runtimes
        self.pids_limit = pids_limit
        self.worker_env = worker_env or {}
        self.home = home
        self.worker_cpu = worker_cpu
        self.worker_memory = worker_memory
        self.config = ServerConfig(
            store_url=store_url or f"sqlite:///{home / 'vivace.db'}",
            blob_dir=str(home / "blobs"),
            tick=tick,
            worker_timeout=10.0,
            app_heartbeat_timeout=10.0,
        )
        self.plane = ControlPlane(self.config)
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.creds: dict[str, str] = {}
        self.worker: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None

    @property
    def user_token(self) -> str:
        return f"{self.creds['token_id']}:{self.creds['token_secret']}"

    @property
    def worker_token(self) -> str:
        return f"{self.creds['worker_token_id']}:{self.creds['worker_token_secret']}"

    def client_env(self) -> dict[str, str]:
        return {
            "VIVACE_SERVER_URL": self.url,
            "VIVACE_TOKEN_ID": self.creds["token_id"],
            "VIVACE_TOKEN_SECRET": self.creds["token_secret"],
        }

    def start(self) -> LocalCluster:
        import uvicorn

        from vivace.server.api import create_app

        self.home.mkdir(parents=True, exist_ok=True)
        self.plane.store.start()
        self.creds = bootstrap_tokens(self.plane, self.home)
        app = create_app(self.plane, manage_plane=False)
        cfg = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            loop="asyncio",
            ws="websockets-sansio",
            # as the real server: requests still open at shutdown (long-polls) get 2 s, not until they end
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(cfg)

        async def main() -> None:
            await self.plane.start_loops()
            try:
                await self._server.serve()
            finally:
                await self.plane.stop()

        self._thread = threading.Thread(
            target=lambda: asyncio.run(main()), name="vivace-test-server", daemon=True
        )
        self._thread.start()
        _wait_http(f"{self.url}/healthz")
        try:
            self.start_worker()
        except BaseException:
            self.stop()  # no worker or server outlives a failed start
            raise
        return self

    def start_worker(self, name: str = "worker") -> None:
        """Start a worker process with its own state directory ``home/name`` (log: ``home/name.log``);
        a second call with another name adds a second worker (``self.worker`` is the latest)."""
        env = {**os.environ, **self.worker_env, "VIVACE_WORKER_TOKEN": self.worker_token}
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115
        started = time.time() - 0.5  # registered after this: this worker (a restart replaces the old row)
        extra = []
        if self.runtimes:
            extra += ["--runtimes", ",".join(self.runtimes)]
        if self.pids_limit is not None:
            extra += ["--pids-limit", str(self.pids_limit)]
        if self.warm_pool is not None:
            extra += ["--warm-pool", str(self.warm_pool)]
        if self.sandbox_pool is not None:
            extra += ["--sandbox-pool", str(self.sandbox_pool)]
        switch: list[str] = []
        if self.worker_user is not None:  # its directory is its own; everything else it may only read
            import pwd

            gid = pwd.getpwuid(self.worker_user).pw_gid
            (self.home / name).mkdir(exist_ok=True)
            os.chown(self.home / name, self.worker_user, gid)
            switch = ["setpriv", f"--reuid={self.worker_user}", f"--regid={gid}", "--clear-groups", "--"]
            env["HOME"] = str(self.home / name)
        self.worker = subprocess.Popen(
            [
                *self.worker_wrapper,
                *switch,
                sys.executable,
                "-m",
                "vivace.cli.main",
                "worker",
                "--server",
                self.url,
                "--dir",
                str(self.home / name),
                "--cpu",
                str(self.worker_cpu),
                "--memory",
                str(self.worker_memory),
                *extra,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + REGISTER_TIMEOUT
        while time.monotonic() < deadline:
            if self.plane.store.write_sync(
                lambda tx: tx.scalar(
                    "SELECT COUNT(*) FROM workers WHERE state = 'alive' AND registered_at >= ?", (started,)
                )
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the worker did not register within {REGISTER_TIMEOUT:g} s (see {name}.log)")

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=20)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# a first worker start builds its base and runtime bundle: seconds here, a minute under emulation (tests/vm)
REGISTER_TIMEOUT = float(os.environ.get("VIVACE_TEST_REGISTER_TIMEOUT", "120"))


def _wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s")
