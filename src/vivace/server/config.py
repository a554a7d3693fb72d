"""Control-plane settings."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class ServerConfig:
    store_url: str
    blob_dir: str
    worker_timeout: float = 30.0  # a worker that has not polled for this long is dead
    app_heartbeat_timeout: float = 20.0  # an ephemeral app whose client stopped heartbeating stops
    tick: float = 1.0  # the autoscaler and reaper run at least this often
    # the key that seals secrets' values when VIVACE_SECRET_KEY is not set (default: secret.key in the
    # server's home, the directory that holds blob_dir)
    secret_key_file: str = ""
    # the address raw TCP tunnels (a sandbox's unencrypted_ports) listen on: the API's own by default
    tunnel_host: str = "127.0.0.1"
    # web endpoints answer at <app>-<label>.<web_domain> (wildcard DNS to this server; may end in :port);
    # None: only by path, at <server>/web/<app>-<label>/
    web_domain: str | None = None
    # log lines (containers' and image builds') older than this many seconds are deleted; 0: kept forever
    log_retention: float = 30 * 86400.0
    # where spans go (OTLP/HTTP JSON, server/otlp.py); None: from OTEL_EXPORTER_OTLP_* or nowhere
    otlp_endpoint: str | None = None

    def __post_init__(self) -> None:
        if not self.secret_key_file:
            self.secret_key_file = os.path.join(os.path.dirname(os.path.abspath(self.blob_dir)), "secret.key")
