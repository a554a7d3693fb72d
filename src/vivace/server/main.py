"""Run the control plane (``vivace server``), optionally with an embedded local worker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from vivace._version import __version__
from vivace.server.config import ServerConfig
from vivace.server.plane import ControlPlane
from vivace.server.services import tokens

log = logging.getLogger("vivace.server")


def bootstrap_tokens(plane: ControlPlane, home: Path) -> dict[str, str]:
    """On first start, create a user and a worker token and keep them in ``home/credentials.json`` (0600)."""
    path = home / "credentials.json"
    if path.exists():
        creds: dict[str, str] = json.loads(path.read_text())
        return creds

    def op(tx: Any) -> dict[str, str]:
        uid, usec = tokens.create_token(tx, "user", "bootstrap")
        wid, wsec = tokens.create_token(tx, "worker", "bootstrap")
        return {"token_id": uid, "token_secret": usec, "worker_token_id": wid, "worker_token_secret": wsec}

    creds = plane.store.write_sync(op)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    os.replace(tmp, path)
    return creds


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve(
    *,
    host: str,
    port: int,
    home: Path,
    store_url: str | None,
    embedded: bool,
    cpu: float | None = None,
    memory: int | None = None,
    web_domain: str | None = None,
    pools_file: Path | None = None,
    log_retention: float | None = None,
    otlp_endpoint: str | None = None,
) -> None:
    import uvicorn

    from vivace.server.api import create_app
    from vivace.server.services import metering

    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    # the store's threads hand results back to the event loop: with the default 5 ms switch interval a
    # thread waiting for the GIL adds milliseconds to every request
    sys.setswitchinterval(0.0002)
    config = ServerConfig(
        store_url=store_url or f"sqlite:///{home / 'vivace.db'}",
        blob_dir=str(home / "blobs"),
        tunnel_host=host,
        web_domain=web_domain,
    )
    if log_retention is not None:
        config.log_retention = log_retention
    config.otlp_endpoint = otlp_endpoint
    if os.environ.get("VIVACE_APP_HEARTBEAT_TIMEOUT"):
        config.app_heartbeat_timeout = float(os.environ["VIVACE_APP_HEARTBEAT_TIMEOUT"])
    # worker pools' prices: --pools, else <home>/pools.toml where it exists (read before anything
    # starts, so that a bad file stops the server with its reason)
    pools_path = pools_file or (home / "pools.toml")
    pools = metering.load_pools(pools_path) if pools_file or pools_path.exists() else {}
    plane = ControlPlane(config)
    plane.store.start()
    if pools:
        plane.store.write_sync(lambda tx: metering.set_pools(tx, pools))
        log.info("prices of pool(s) %s from %s", ", ".join(sorted(pools)), pools_path)
    creds = bootstrap_tokens(plane, home)
    if port == 0:
        port = free_port(host)
    url = f"http://{host}:{port}"
    worker: subprocess.Popen[bytes] | None = None
    if embedded:
        worker = _spawn_worker(url, creds, home, cpu, memory)
    _write_state(home, url, worker)
    app = create_app(plane, manage_plane=False)

    _Server = _server_class()

    async def main() -> None:
        await plane.start_loops()
        cfg = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            loop="none",
            http="httptools",
            ws="websockets-sansio",
            timeout_graceful_shutdown=2,
        )
        server = _Server(cfg)
        server.worker = worker
        log.info("vivace %s control plane on %s (store %s)", __version__, url, plane.store.dialect.name)
        try:
            await server.serve()
        finally:
            await plane.stop()

    try:
        _run(main())
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
        (home / "daemon.json").unlink(missing_ok=True)


def _server_class() -> Any:
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        """Stops the embedded worker before the API goes away, so it can report its containers' exits."""

        worker: subprocess.Popen[bytes] | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            worker = self.worker
            if worker is None or worker.poll() is not None:
                super().handle_exit(sig, frame)
                return
            worker.send_signal(signal.SIGTERM)

            def finish() -> None:
                try:
                    worker.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    worker.kill()
                super(Server, self).handle_exit(sig, frame)

            threading.Thread(target=finish, daemon=True).start()

    return Server


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover
        asyncio.run(coro)


def _spawn_worker(
    url: str, creds: dict[str, str], home: Path, cpu: float | None, memory: int | None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("VIVACE_SECRET_KEY", None)  # the worker gets values per container, never the key
    env["VIVACE_WORKER_TOKEN"] = f"{creds['worker_token_id']}:{creds['worker_token_secret']}"
    argv = [
        sys.executable,
        "-m",
        "vivace.cli.main",
        "worker",
        "--server",
        url,
        "--dir",
        str(home / "worker"),
        "--name",
        "embedded",
    ]
    if cpu:
        argv += ["--cpu", str(cpu)]
    if memory:
        argv += ["--memory", str(memory)]
    logf = open(home / "worker.log", "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(argv, env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _write_state(home: Path, url: str, worker: subprocess.Popen[bytes] | None) -> None:
    state = {
        "url": url,
        "pid": os.getpid(),
        "worker_pid": worker.pid if worker else None,
        "version": __version__,
    }
    tmp = home / "daemon.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, home / "daemon.json")
