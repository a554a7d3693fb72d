"""Sandboxes on the wire: the settings a sandbox adds to its container's spec, and the limits of its I/O.

A sandbox is a container whose main process is the user's command (or an idle process). Its resources,
image, secrets and volumes are a function spec's (``FunctionSpec``, validated there); what only a
sandbox has travels in ``FunctionSpec.sandbox``, validated here. Names and tags are the sandbox's own
rows in the store.
"""

import ipaddress
import re
from typing import Any, Dict, List, Optional

MAX_ARGS = 4096
MAX_ARGV_BYTES = 256 * 1024
MAX_TAGS = 32
MAX_TAG_LEN = 256
MAX_NAME = 64
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_CIDRS = 64
MAX_PORTS = 16
MAX_TIMEOUT = 24 * 3600  # a sandbox lives at most a day, as Modal allows
MAX_CHUNK = 4 * 1024 * 1024  # bytes one stream read or stdin write moves
MAX_FS_CHUNK = 8 * 1024 * 1024  # bytes one filesystem read or write moves
STREAMS = ("stdout", "stderr")
MAIN = "main"  # the process id of a sandbox's main process (exec'd ones are "ex-<n>")
FS_OPS = ("read", "write", "list", "stat", "mkdir", "remove")


class SandboxSpecError(ValueError):
    """A sandbox setting is missing or has the wrong type or range."""


def check_argv(argv: Any, what: str, *, allow_empty: bool) -> List[str]:
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise SandboxSpecError(f"{what} must be a list of strings")
    if not argv and not allow_empty:
        raise SandboxSpecError(f"{what} must name a program")
    if len(argv) > MAX_ARGS or sum(len(a.encode()) + 1 for a in argv) > MAX_ARGV_BYTES:
        raise SandboxSpecError(f"{what} is too long (at most {MAX_ARGS} arguments, {MAX_ARGV_BYTES} bytes)")
    if any("\0" in a for a in argv):
        raise SandboxSpecError(f"{what} must not contain NUL characters")
    return list(argv)


def check_workdir(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or len(value) > 4096:
        raise SandboxSpecError(f"workdir must be an absolute path, got {value!r}")
    return value


def check_env(value: Any) -> Dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in value.items()
    ):
        raise SandboxSpecError("env must map variable names (no '=' or NUL) to strings")
    return dict(value)


def check_cidrs(value: Any) -> Optional[List[str]]:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_CIDRS:
        raise SandboxSpecError(f"outbound_cidr_allowlist must be a list of at most {MAX_CIDRS} CIDRs")
    out = []
    for item in value:
        try:
            net = ipaddress.ip_network(item, strict=False) if isinstance(item, str) else None
        except ValueError:
            net = None
        if net is None or net.version != 4:
            raise SandboxSpecError(f"outbound_cidr_allowlist: {item!r} is not an IPv4 CIDR like '10.0.0.0/8'")
        out.append(str(net))
    return out


def check_ports(value: Any, what: str) -> List[int]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_PORTS:
        raise SandboxSpecError(f"{what} must be a list of at most {MAX_PORTS} ports")
    if not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in value):
        raise SandboxSpecError(f"{what} must be port numbers from 1 to 65535")
    return sorted(set(value))


def check_settings(raw: Any) -> Dict[str, Any]:
    """``FunctionSpec.sandbox``: ``command`` (empty: idle), ``workdir``, ``idle_timeout``,
    ``cidr_allowlist`` (None: open; [] with block_network), ``ports`` (each gets an HTTP tunnel),
    ``tcp_ports`` (those of ``ports`` that also get a raw TCP tunnel: ``unencrypted_ports``)."""
    if not isinstance(raw, dict):
        raise SandboxSpecError("sandbox settings must be an object")
    unknown = sorted(
        set(raw) - {"command", "workdir", "idle_timeout", "cidr_allowlist", "ports", "tcp_ports", "pty"}
    )
    if unknown:
        raise SandboxSpecError(f"unknown sandbox settings: {', '.join(unknown)}")
    idle = raw.get("idle_timeout")
    if idle is not None and (
        isinstance(idle, bool) or not isinstance(idle, (int, float)) or not 1 <= idle <= MAX_TIMEOUT
    ):
        raise SandboxSpecError(f"idle_timeout must be from 1 to {MAX_TIMEOUT} seconds, got {idle!r}")
    ports = check_ports(raw.get("ports"), "ports")
    tcp_ports = check_ports(raw.get("tcp_ports"), "tcp_ports")
    if not set(tcp_ports) <= set(ports):
        raise SandboxSpecError("tcp_ports must be some of ports")
    return {
        "command": check_argv(raw.get("command", []), "the sandbox's command", allow_empty=True),
        "workdir": check_workdir(raw.get("workdir")),
        "idle_timeout": idle,
        "cidr_allowlist": check_cidrs(raw.get("cidr_allowlist")),
        "ports": ports,
        "tcp_ports": tcp_ports,
        "pty": _flag(raw.get("pty", False), "pty"),
    }


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SandboxSpecError(f"{what} must be true or false")
    return value


def check_name(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise SandboxSpecError(
            f"a sandbox name is 1-{MAX_NAME} letters, digits, '.', '_' or '-' (starting with a letter or "
            f"digit), got {value!r}"
        )
    return value


def check_tags(value: Any) -> Dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_TAGS:
        raise SandboxSpecError(f"tags must be a dict of at most {MAX_TAGS} string keys and values")
    for k, v in value.items():
        if (
            not isinstance(k, str)
            or not isinstance(v, str)
            or not k
            or len(k) > MAX_TAG_LEN
            or len(v) > MAX_TAG_LEN
        ):
            raise SandboxSpecError(
                f"tags map non-empty strings to strings of at most {MAX_TAG_LEN} characters"
            )
    return dict(value)
