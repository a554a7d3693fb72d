"""Binary framing for the call path: a small JSON header plus raw binary payloads.

Layout: ``b"VVF1"``, a 4-byte big-endian header length, the UTF-8 JSON header, then the payloads
back to back. ``header["_b"]`` lists the payload lengths. Payloads are cloudpickled bytes and never
pass through JSON or base64.
"""

import json
import struct
from typing import Any, Dict, List, Sequence, Tuple

MAGIC = b"VVF1"
CONTENT_TYPE = "application/vnd.vivace.frames"
_LEN = struct.Struct(">I")


class FrameError(ValueError):
    """The body is not a valid frame."""


def encode(header: Dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    head = dict(header)
    head["_b"] = [len(b) for b in blobs]
    raw = json.dumps(head, separators=(",", ":")).encode()
    return b"".join([MAGIC, _LEN.pack(len(raw)), raw, *blobs])


def decode(body: bytes) -> Tuple[Dict[str, Any], List[bytes]]:
    if len(body) < 8 or body[:4] != MAGIC:
        raise FrameError("body is not a vivace frame (bad magic)")
    (hlen,) = _LEN.unpack_from(body, 4)
    end = 8 + hlen
    if end > len(body):
        raise FrameError("frame header is truncated")
    try:
        header = json.loads(body[8:end])
    except ValueError as exc:
        raise FrameError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("frame header must be a JSON object")
    lens = header.pop("_b", [])
    if not isinstance(lens, list) or not all(isinstance(n, int) and n >= 0 for n in lens):
        raise FrameError("frame header has a bad payload table")
    if end + sum(lens) != len(body):
        raise FrameError("frame payloads do not match the payload table")
    view = memoryview(body)
    blobs = []
    pos = end
    for n in lens:
        blobs.append(bytes(view[pos : pos + n]))
        pos += n
    return header, blobs
