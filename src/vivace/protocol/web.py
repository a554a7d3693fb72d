"""Web endpoints as they travel: a function's web settings, its host name, and requests and responses.

An HTTP request to an endpoint becomes one input of its function (so requests queue, scale and time out
like any input). The input's payload is a frame (``protocol.frames``) whose header describes the
request and whose one payload is the body; a cloudpickled payload (``.remote()``) starts differently,
so the runtime tells them apart by the frame's magic. The response comes back as outputs: zero or more
generator items, then the final output, each a "piece" (a frame: the first one's header holds the
status and headers, every piece's payload is the next part of the body).

Runs inside user images too: 3.10-compatible and stdlib only.
"""

import hashlib
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from vivace.protocol import frames

KINDS = ("fastapi", "asgi", "wsgi", "server")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
MAX_REQUEST_BODY = 64 * 1024 * 1024  # bigger bodies get 413 at the gateway
PIECE_SIZE = 1024 * 1024  # the container hands the body back in pieces of at most this much
LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
HOST_LABEL_MAX = 63  # one DNS label
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade"}
)  # fmt: skip


class WebSpecError(ValueError):
    """A web endpoint's settings are malformed."""


def check_web(raw: Any) -> Dict[str, Any]:
    """Validate ``FunctionSpec.web``; return it with defaults filled in."""
    if not isinstance(raw, dict):
        raise WebSpecError("web must be an object")
    known = {"kind", "method", "label", "docs", "requires_proxy_auth", "port", "startup_timeout"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise WebSpecError(f"unknown web endpoint settings: {', '.join(unknown)}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise WebSpecError(f"web kind must be one of {', '.join(KINDS)}, got {kind!r}")
    out: Dict[str, Any] = {"kind": kind, "label": raw.get("label")}
    if out["label"] is not None:
        check_label(out["label"])
    for flag in ("docs", "requires_proxy_auth"):
        value = raw.get(flag, False)
        if not isinstance(value, bool):
            raise WebSpecError(f"{flag} must be True or False, got {value!r}")
        out[flag] = value
    if kind == "fastapi":
        method = raw.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise WebSpecError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        out["method"] = method.upper()
    elif raw.get("method") is not None:
        raise WebSpecError("method applies to fastapi_endpoint only: an app routes methods itself")
    if kind == "server":
        port = raw.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise WebSpecError(f"web_server needs a port between 1 and 65535, got {port!r}")
        timeout = raw.get("startup_timeout", 5.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise WebSpecError(f"startup_timeout must be between 0 and 3600 seconds, got {timeout!r}")
        out.update(port=port, startup_timeout=float(timeout))
    elif raw.get("port") is not None or raw.get("startup_timeout") is not None:
        raise WebSpecError("port and startup_timeout apply to web_server only")
    return out


def check_label(label: Any) -> str:
    if not isinstance(label, str) or not LABEL.fullmatch(label):
        raise WebSpecError(
            f"a web label is lowercase letters, digits and hyphens (not first or last), at most 63: "
            f"got {label!r}"
        )
    return label


def _dns(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def host_label(app: str, function: str, label: Optional[str], dev: bool) -> str:
    """The endpoint's name in URLs: ``<app>-<label>`` (``-dev`` added for an app that is not deployed),
    one DNS label; a name too long is cut and ends in a hash of the whole, so it stays unique."""
    name = f"{_dns(app)}-{label or _dns(function)}" + ("-dev" if dev else "")
    name = _dns(name)
    if len(name) > HOST_LABEL_MAX:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = name[: HOST_LABEL_MAX - 9].rstrip("-") + "-" + digest
    return name


# -- requests --------------------------------------------------------------------------------------


def encode_request(
    method: str,
    path: str,
    query: bytes,
    headers: Sequence[Tuple[str, str]],
    body: bytes,
    *,
    scheme: str = "http",
    root_path: str = "",
    client: Optional[Tuple[str, int]] = None,
    server: Optional[Tuple[str, int]] = None,
    call: Optional[str] = None,
    websocket: bool = False,
) -> bytes:
    """``call``: the method of a class that answers (None for a function); ``websocket``: the request
    opens a WebSocket session (its client's messages follow through ``encode_message``)."""
    head = {
        "web": 1,
        "call": call,
        "websocket": websocket,
        "method": method,
        "path": path,
        "query": query.decode("latin-1"),
        "headers": [[k, v] for k, v in headers],
        "scheme": scheme,
        "root_path": root_path,
        "client": list(client) if client else None,
        "server": list(server) if server else None,
    }
    return frames.encode(head, [body])


def is_request(payload: bytes) -> bool:
    return payload[:4] == frames.MAGIC


def decode_request(payload: bytes) -> Tuple[Dict[str, Any], bytes]:
    head, blobs = frames.decode(payload)
    if head.get("web") != 1 or len(blobs) != 1:
        raise frames.FrameError("not a web request")
    return head, blobs[0]


# -- responses -------------------------------------------------------------------------------------


def encode_piece(
    body: bytes, status: Optional[int] = None, headers: Optional[List[List[str]]] = None
) -> bytes:
    head: Dict[str, Any] = {}
    if status is not None:
        head = {"status": status, "headers": headers or []}
    return frames.encode(head, [body])


def decode_piece(data: bytes) -> Tuple[Optional[int], List[Tuple[str, str]], bytes]:
    """(status, headers, body); status is None for every piece after the first."""
    head, blobs = frames.decode(data)
    body = blobs[0] if blobs else b""
    status = head.get("status")
    if status is None:
        return None, [], body
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise frames.FrameError(f"a response status must be 100-599, got {status!r}")
    raw = head.get("headers") or []
    if not isinstance(raw, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in raw
    ):
        raise frames.FrameError("response headers must be [name, value] string pairs")
    return status, [(k, v) for k, v in raw], body


def error_piece(status: int, message: str) -> bytes:
    body = (message + "\n").encode()
    return encode_piece(body, status, [["content-type", "text/plain; charset=utf-8"]])


# -- WebSockets ------------------------------------------------------------------------------------
# The client's messages reach the container one by one (``encode_message``: an ASGI websocket.receive
# or websocket.disconnect); the app's go back as pieces whose header lists ASGI events under "ws"
# (accept, send, close), binary data in the piece's payloads.


def encode_message(message: Mapping[str, Any]) -> bytes:
    head: Dict[str, Any] = {"type": message["type"]}
    blobs: List[bytes] = []
    if message.get("bytes") is not None:
        head["blob"] = 0
        blobs.append(bytes(message["bytes"]))
    elif message.get("text") is not None:
        head["text"] = message["text"]
    if message.get("code") is not None:
        head["code"] = int(message["code"])
    return frames.encode(head, blobs)


def decode_message(data: bytes) -> Dict[str, Any]:
    head, blobs = frames.decode(data)
    out: Dict[str, Any] = {"type": head.get("type")}
    if out["type"] not in ("websocket.receive", "websocket.disconnect"):
        raise frames.FrameError(f"not a client WebSocket message: {out['type']!r}")
    if "blob" in head:
        out["bytes"] = blobs[0]
    elif "text" in head:
        out["text"] = head["text"]
    if "code" in head:
        out["code"] = head["code"]
    return out


def encode_ws_piece(events: List[Dict[str, Any]]) -> bytes:
    """The app's ASGI events (accept, send, close) as one piece."""
    out: List[Dict[str, Any]] = []
    blobs: List[bytes] = []
    for ev in events:
        kind = ev["type"]
        item: Dict[str, Any] = {"type": kind}
        if kind == "websocket.accept":
            item["subprotocol"] = ev.get("subprotocol")
            item["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in ev.get("headers") or []]
        elif kind == "websocket.send":
            if ev.get("bytes") is not None:
                item["blob"] = len(blobs)
                blobs.append(bytes(ev["bytes"]))
            else:
                item["text"] = ev.get("text") or ""
        elif kind == "websocket.close":
            item["code"] = int(ev.get("code") or 1000)
            item["reason"] = ev.get("reason") or ""
        else:
            continue
        out.append(item)
    return frames.encode({"ws": out}, blobs)


def decode_ws_piece(data: bytes) -> List[Dict[str, Any]]:
    head, blobs = frames.decode(data)
    events = head.get("ws")
    if not isinstance(events, list):
        raise frames.FrameError("not a WebSocket piece")
    out = []
    for ev in events:
        if not isinstance(ev, dict):
            raise frames.FrameError("a WebSocket event must be an object")
        if "blob" in ev:
            ev = {**ev, "bytes": blobs[int(ev["blob"])]}
        out.append(ev)
    return out
