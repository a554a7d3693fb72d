"""Control-plane settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerConfig:
    store_url: str
    blob_dir: str
    worker_timeout: float = 30.0  # a worker that has not polled for this long is dead
    app_heartbeat_timeout: float = 20.0  # an ephemeral app whose client stopped heartbeating stops
    tick: float = 1.0  # the autoscaler and reaper run at least this often
