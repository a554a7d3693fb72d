"""Export spans (``services/traces.py``) to an OpenTelemetry collector over OTLP/HTTP with JSON.

Configured by the standard variables: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the full URL) or
``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` is appended), ``OTEL_EXPORTER_OTLP_HEADERS``
(``key=value,key2=value2``, percent-encoded values) and ``OTEL_SERVICE_NAME`` (default ``vivace``); or
``vivace server --otlp-endpoint URL``. Nothing is exported when no endpoint is set.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vivace.server")
TIMEOUT = 10.0


@dataclass
class OtlpConfig:
    endpoint: str
    headers: dict[str, str] = field(default_factory=dict)
    service: str = "vivace"


def from_env(endpoint: str | None = None, env: dict[str, str] | None = None) -> OtlpConfig | None:
    env = dict(os.environ) if env is None else env
    url = endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not url and env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        url = env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the OTLP endpoint must be an http:// or https:// URL, got {url!r}")
    headers = {}
    for item in (env.get("OTEL_EXPORTER_OTLP_HEADERS") or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[key.strip()] = urllib.parse.unquote(value.strip())
    return OtlpConfig(url, headers, env.get("OTEL_SERVICE_NAME") or "vivace")


def post(config: OtlpConfig, body: dict[str, Any]) -> None:
    """Send one export request (blocking; run it in a thread). Raises OSError when it fails."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        config.endpoint, data=data, method="POST",
        headers={**config.headers, "content-type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            resp.read()
    except urllib.error.HTTPError as err:
        raise OSError(f"the collector answered {err.code}") from None
