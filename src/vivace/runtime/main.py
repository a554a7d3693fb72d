"""The container's input loop: import the user's function, lease inputs, run them, hand in outputs.

Heartbeats run on their own thread with their own connection, so CPU-bound user code cannot starve
them (the GIL is released every few milliseconds). SIGTERM stops the loop: an idle container exits at
once; a busy one finishes its input, hands in the output and exits 0.
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from vivace.protocol.calls import FINAL, OutputStatus
from vivace.runtime import context
from vivace.runtime.socket import SocketError, WorkerSocket

HEARTBEAT_INTERVAL = 1.0
LEASE_WAIT = 25.0
MAX_BATCH = 64  # the control plane gives more than one input only to functions with short inputs
WARM_READY = "vivace: warm container ready"  # a warm container's first line on stdout


class Runtime:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.sock = WorkerSocket(socket_path)
        self.stopping = False
        self.busy = False
        self.current_seq: Optional[int] = None
        self.cancelled: set[int] = set()
        self.main_thread = threading.get_ident()
        self.info: Dict[str, Any] = {}

    # -- start -----------------------------------------------------------------------------------
    def load(self) -> Callable[..., Any]:
        self.info = self.sock.get_json("/hello")
        spec = self.info["spec"]
        context.set_container(self.info["container_id"], self.info["app_id"], self.info["function_id"])
        if self.info.get("has_definition"):
            from vivace._sdk.serialization import deserialize

            obj = deserialize(self.sock.get_bytes("/definition"))
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            obj = importlib.import_module(spec["module"])
            for part in spec["qualname"].split("."):
                obj = getattr(obj, part)
        raw = getattr(obj, "_vivace_raw_f", None) or obj
        if not callable(raw):
            raise TypeError(f"{spec['module']}.{spec['qualname']} is not callable")
        return raw  # type: ignore[no-any-return]

    # -- heartbeats --------------------------------------------------------------------------------
    def heartbeat_forever(self) -> None:
        sock = WorkerSocket(self.socket_path)
        while True:
            try:
                reply = sock.post_json("/heartbeat", {"current": self.current_seq})
            except (SocketError, OSError):
                time.sleep(HEARTBEAT_INTERVAL)
                continue
            for seq in reply.get("cancel", []):
                if seq == self.current_seq and seq not in self.cancelled:
                    self.cancelled.add(seq)
                    self._interrupt()
            time.sleep(HEARTBEAT_INTERVAL)

    def _interrupt(self) -> None:
        from vivace.exception import InputCancellation

        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(self.main_thread), ctypes.py_object(InputCancellation)
        )

    def on_sigterm(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if not self.busy:
            raise SystemExit(0)

    # -- the loop ----------------------------------------------------------------------------------
    def serve(self, fn: Callable[..., Any]) -> None:
        spec = self.info["spec"]
        single_use = bool(spec.get("single_use_containers"))
        outputs: List[Dict[str, Any]] = []
        blobs: List[bytes] = []
        served = 0
        while True:
            want = 0 if self.stopping or (single_use and served) else (1 if single_use else MAX_BATCH)
            header, payloads = self.sock.exchange(
                {"outputs": outputs, "want": want, "wait": LEASE_WAIT if want else 0, "held": []}, blobs
            )
            outputs, blobs = [], []
            if want == 0:
                return
            for item in header.get("inputs", []):
                self.run_one(fn, item, payloads[item["blob"]], outputs, blobs, spec)
                served += 1

    def run_one(
        self,
        fn: Callable[..., Any],
        item: Dict[str, Any],
        payload: bytes,
        outputs: List[Dict[str, Any]],
        blobs: List[bytes],
        spec: Dict[str, Any],
    ) -> None:
        from vivace._sdk.serialization import deserialize, pack_exception, serialize

        seq = item["seq"]
        self.current_seq = seq
        context.set_input(f"in-{seq}", item["call"])
        started = time.monotonic()
        status, data, error = OutputStatus.SUCCESS.value, None, None
        self.busy = True
        try:
            args, kwargs = deserialize(payload)
            if spec.get("is_generator"):
                self._run_generator(fn, seq, args, kwargs)
            else:
                result = fn(*args, **kwargs)
                if inspect.iscoroutine(result):
                    import asyncio

                    result = asyncio.run(result)
                data = serialize(result)
        except BaseException as err:  # the user's failure, reported with its traceback
            if isinstance(err, SystemExit) and self.stopping:
                raise
            status = OutputStatus.CANCELLED.value if seq in self.cancelled else OutputStatus.FAILURE.value
            error, data = pack_exception(err)
        finally:
            self.busy = False
            self.current_seq = None
            context.set_input(None, None)
        out: Dict[str, Any] = {
            "seq": seq,
            "part": FINAL,
            "status": status,
            "error": error,
            "duration": time.monotonic() - started,
        }
        if data is not None:
            out["blob"] = len(blobs)
            blobs.append(data)
        outputs.append(out)

    def _run_generator(self, fn: Callable[..., Any], seq: int, args: Any, kwargs: Any) -> None:
        from vivace._sdk.serialization import serialize

        gen = fn(*args, **kwargs)
        if not inspect.isgenerator(gen):
            raise TypeError("a function declared as a generator must yield")
        for part, value in enumerate(gen):
            self.sock.exchange(
                {
                    "outputs": [{"seq": seq, "part": part, "status": "item", "blob": 0}],
                    "want": 0,
                    "wait": 0,
                    "held": [seq],
                },
                [serialize(value)],
            )

    def fail_all(self, err: BaseException) -> None:
        """The function could not be loaded: fail the inputs waiting for it instead of crash-looping."""
        from vivace._sdk.serialization import pack_exception

        error, blob = pack_exception(err)
        header, _ = self.sock.exchange({"outputs": [], "want": MAX_BATCH, "wait": 5, "held": []}, [])
        outs = []
        for item in header.get("inputs", []):
            o: Dict[str, Any] = {
                "seq": item["seq"],
                "part": FINAL,
                "status": OutputStatus.INIT_FAILURE.value,
                "error": error,
            }
            if blob is not None:
                o["blob"] = 0
            outs.append(o)
        if outs:
            self.sock.exchange(
                {"outputs": outs, "want": 0, "wait": 0, "held": []}, [blob] if blob is not None else []
            )


def wait_for_function() -> None:
    """A warm container: import what every container needs, then wait for the worker to hand over a
    function (one JSON line on stdin: the container's environment). EOF: the pool is closing."""
    import json

    import vivace  # noqa: F401  (user code imports it: pay for that now, not on the call path)
    from vivace._sdk import serialization  # noqa: F401  (cloudpickle)

    sys.stdout.write(WARM_READY + "\n")  # the worker counts it ready (and takes it) only now
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(0)
    os.environ.update(json.loads(line)["env"])
    importlib.invalidate_caches()  # /src was empty when the interpreter started


def main() -> None:
    if os.environ.pop("VIVACE_WARM", None):
        wait_for_function()
    path = os.environ.get("VIVACE_SOCKET")
    if not path:
        sys.stderr.write("vivace.runtime: VIVACE_SOCKET is not set; this runs inside a vivace container\n")
        raise SystemExit(2)
    rt = Runtime(path)
    signal.signal(signal.SIGTERM, rt.on_sigterm)
    threading.Thread(target=rt.heartbeat_forever, name="vivace-heartbeat", daemon=True).start()
    try:
        fn = rt.load()
    except (SocketError, SystemExit):
        raise
    except BaseException as err:
        import traceback

        traceback.print_exc()
        rt.fail_all(err)
        raise SystemExit(1) from None
    try:
        rt.serve(fn)
    except SocketError as err:
        if err.status == 410:  # our lease was revoked: the control plane has replaced us
            raise SystemExit(0) from None
        raise


if __name__ == "__main__":
    main()
