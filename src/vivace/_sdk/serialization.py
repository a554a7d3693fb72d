"""cloudpickle with typed errors, and exceptions that travel with their remote traceback.

Used by the SDK and by the in-container runtime, so it stays 3.10-compatible and lean.
"""

from __future__ import annotations

import json
import pickle
import traceback
from typing import Any

from vivace import exception as exc


def serialize(obj: Any) -> bytes:
    import cloudpickle

    try:
        return cloudpickle.dumps(obj)  # type: ignore[no-any-return]
    except Exception as err:
        raise exc.SerializationError(f"cannot serialize {type(obj).__name__}: {err}") from err


def deserialize(data: bytes) -> Any:
    try:
        return pickle.loads(data)
    except Exception as err:
        raise exc.DeserializationError(
            f"cannot deserialize a value ({err}); is the module that defines it installed on this side?"
        ) from err


def pack_exception(err: BaseException) -> tuple[str, bytes | None]:
    """Return (error JSON with type, message and formatted traceback; the pickled exception or None)."""
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    info = {"type": type(err).__name__, "module": type(err).__module__, "message": str(err), "traceback": tb}
    try:
        import cloudpickle

        blob: bytes | None = cloudpickle.dumps(err)
        pickle.loads(blob)  # type: ignore[arg-type] # it must also come back
    except Exception:
        blob = None
    return json.dumps(info), blob


def unpack_exception(error: str | None, blob: bytes | None) -> BaseException:
    """Rebuild the remote exception (original type when possible) with the remote traceback attached."""
    info: dict[str, Any] = {}
    if error:
        try:
            info = json.loads(error)
        except ValueError:
            info = {"message": error}
    err: BaseException | None = None
    if blob:
        try:
            err = pickle.loads(blob)
        except Exception:
            err = None
    if not isinstance(err, BaseException):
        name = info.get("type", "Exception")
        err = exc.RemoteError(f"{name}: {info.get('message', '')}")
    tb = info.get("traceback")
    if tb and hasattr(err, "add_note"):
        err.add_note("\nRemote traceback:\n" + tb.rstrip())
    err.__vivace_remote_traceback__ = tb  # type: ignore[attr-defined]
    return err
