"""The container's input loop: import the user's function, lease inputs, run them, hand in outputs.

Heartbeats run on their own thread with their own connection, so CPU-bound user code cannot starve
them (the GIL is released every few milliseconds). SIGTERM stops the loop: an idle container exits at
once; a busy one finishes its input, hands in the output and exits 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import importlib
import inspect
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from vivace.protocol.calls import FINAL, OutputStatus
from vivace.runtime import context
from vivace.runtime.socket import SocketError, WorkerSocket

HEARTBEAT_INTERVAL = 1.0
LEASE_WAIT = 25.0
MAX_BATCH = 64  # the control plane gives more than one input only to functions with short inputs
MESSAGE_WAIT = 20.0  # a WebSocket session's long-poll for its client's next messages
WARM_READY = "vivace: warm container ready"  # a warm container's first line on stdout
ENTER = "_vivace_enter"  # the marks vivace.decorators sets (not imported: the runtime starts lean)
EXIT = "_vivace_exit"


class Runtime:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.sock = WorkerSocket(socket_path)
        self.stopping = False
        self.busy = False  # the main thread runs user code: SIGTERM lets it finish
        self.cancelled: set[int] = set()
        self.cancellers: Dict[int, Callable[[], Any]] = {}  # running inputs: how to interrupt each
        self.lock = threading.Lock()
        self.info: Dict[str, Any] = {}
        self.spec: Dict[str, Any] = {}
        self.fn: Optional[Callable[..., Any]] = None
        self.instance: Any = None  # an @app.cls instance
        self.user_cls: Any = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._local = threading.local()  # one worker-socket connection per thread
        self.web: Dict[Optional[str], Any] = {}  # web endpoints by method (None: the function's own)

    # -- start -----------------------------------------------------------------------------------
    def load(self) -> None:
        self.info = self.sock.get_json("/hello")
        spec = self.spec = self.info["spec"]
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
        if spec.get("is_class"):
            from vivace.cls import decode_params, new_instance

            if not inspect.isclass(raw):
                raise TypeError(f"{spec['module']}.{spec['qualname']} is not a class")
            self.user_cls = raw
            self.instance = new_instance(raw, decode_params(spec.get("params") or {}))
            self._run_hooks(ENTER)
        elif not callable(raw):
            raise TypeError(f"{spec['module']}.{spec['qualname']} is not callable")
        else:
            self.fn = raw
        self._start_web()

    def _start_web(self) -> None:
        """Build the function's web endpoint, or one per web method of a class (after ``@enter``)."""
        settings: Dict[Optional[str], Any] = {}
        if self.spec.get("web"):
            settings[None] = self.spec["web"]
        for name, info in (self.spec.get("methods") or {}).items():
            if info.get("web"):
                settings[name] = info["web"]
        if not settings:
            return
        from vivace.runtime.web import WebEndpoint

        for name, web in settings.items():
            target = self.fn if name is None else getattr(self.instance, name)
            assert target is not None
            endpoint = WebEndpoint(web, target, self.run_coro)
            endpoint.start()
            self.web[name] = endpoint

    def _run_hooks(self, mark: str) -> None:
        from vivace.cls import lifecycle

        hooks = lifecycle(self.user_cls, mark)
        if mark == ENTER:  # snap=True hooks first, as they would run before a memory snapshot
            hooks.sort(key=lambda f: not getattr(f, ENTER)["snap"])
        for hook in hooks:
            result = hook(self.instance)
            if inspect.iscoroutine(result):
                self.run_coro(result)

    def run_exit_hooks(self) -> None:
        for endpoint in self.web.values():
            endpoint.stop()
        if self.instance is None:
            return
        try:
            self._run_hooks(EXIT)
        except BaseException:
            traceback.print_exc()

    def target(self, payload: bytes) -> Tuple[Callable[..., Any], Any, Any, bool]:
        """An input's callable, arguments and whether it is a generator."""
        from vivace._sdk.serialization import deserialize

        decoded = deserialize(payload)
        if self.instance is None:
            args, kwargs = decoded[0], decoded[1]
            assert self.fn is not None
            return self.fn, args, kwargs, bool(self.spec.get("is_generator"))
        if len(decoded) != 3:
            raise TypeError(f"{self.spec['name']} is a class: call one of its methods")
        args, kwargs, method = decoded
        info = self.spec.get("methods", {}).get(method)
        if info is None:
            raise AttributeError(f"{self.user_cls.__name__} has no method {method!r} marked @vivace.method()")
        return getattr(self.instance, method), args, kwargs, bool(info["is_generator"])

    def sock_for_thread(self) -> WorkerSocket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._local.sock = WorkerSocket(self.socket_path)
        return sock

    # -- async -------------------------------------------------------------------------------------
    def loop(self) -> asyncio.AbstractEventLoop:
        """One event loop, on its own thread, runs every coroutine of this container."""
        with self.lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="vivace-async", daemon=True).start()
                self._loop = loop
            return self._loop

    def run_coro(self, coro: Any, seq: Optional[int] = None) -> Any:
        fut = asyncio.run_coroutine_threadsafe(
            _with_context(coro, context.input_id(), context.function_call_id()), self.loop()
        )
        if seq is not None:
            self.cancellers[seq] = fut.cancel
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            from vivace.exception import InputCancellation

            raise InputCancellation("the input was cancelled") from None

    # -- heartbeats --------------------------------------------------------------------------------
    def heartbeat_forever(self) -> None:
        sock = WorkerSocket(self.socket_path)
        while True:
            try:
                reply = sock.post_json("/heartbeat", {})
            except (SocketError, OSError):
                time.sleep(HEARTBEAT_INTERVAL)
                continue
            for seq in reply.get("cancel", []):
                cancel = self.cancellers.get(seq)
                if cancel is not None and seq not in self.cancelled:
                    self.cancelled.add(seq)
                    cancel()
            time.sleep(HEARTBEAT_INTERVAL)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if not self.busy:
            raise SystemExit(0)

    # -- one input ---------------------------------------------------------------------------------
    def run_one(
        self, item: Dict[str, Any], payload: bytes, emit: Callable[[Dict[str, Any], Optional[bytes]], None]
    ) -> None:
        """Run one input on this thread and hand its output to ``emit``."""
        from vivace._sdk.serialization import pack_exception

        seq = item["seq"]
        context.set_input(f"in-{seq}", item["call"])
        thread = threading.get_ident()
        self.cancellers[seq] = lambda: _raise_in(thread)
        started = time.monotonic()
        status, data, error = OutputStatus.SUCCESS.value, None, None
        try:
            if self.web and payload[:4] == b"VVF1":  # an HTTP request (protocol.web), not a pickled call
                data = self.respond(seq, payload)
            else:
                data = self.call(seq, payload)
        except BaseException as err:  # the user's failure, reported with its traceback
            if isinstance(err, SystemExit) and self.stopping:
                raise
            status = OutputStatus.CANCELLED.value if seq in self.cancelled else OutputStatus.FAILURE.value
            error, data = pack_exception(err)
        finally:
            self.cancellers.pop(seq, None)
            context.set_input(None, None)
        emit(_output(seq, status, error, started), data)

    def call(self, seq: int, payload: bytes) -> Optional[bytes]:
        """Run a pickled call; its result, pickled (None for a generator: its items went out)."""
        from vivace._sdk.serialization import serialize

        fn, args, kwargs, is_gen = self.target(payload)
        if is_gen:
            self._run_generator(fn, seq, args, kwargs)
            return None
        result = fn(*args, **kwargs)
        if inspect.iscoroutine(result):
            result = self.run_coro(result, seq)
        return serialize(result)

    def respond(self, seq: int, payload: bytes) -> bytes:
        """Answer an HTTP request: its pieces but the last go out as items, the last is the output."""
        from vivace.protocol.web import decode_request

        head, body = decode_request(payload)
        endpoint = self.web.get(head.get("call"))
        if endpoint is None:
            raise LookupError(f"{self.spec['name']} has no web endpoint {head.get('call')!r}")
        sock = self.sock_for_thread()
        part = 0

        def emit(piece: bytes) -> None:
            nonlocal part
            sock.exchange(
                {"outputs": [{"seq": seq, "part": part, "status": "item", "blob": 0}], "want": 0, "wait": 0},
                [piece],
            )
            part += 1

        def fetch(after: int) -> List[Tuple[int, bytes]]:  # a WebSocket client's next messages
            from vivace.protocol import frames

            raw = self.sock_for_thread().get_bytes(
                f"/api/v1/web/calls/{call_id}/messages?after={after}&wait={MESSAGE_WAIT:g}"
            )
            header, blobs = frames.decode(raw)
            return [(int(m["seq"]), blobs[m["blob"]]) for m in header["messages"]]

        call_id = context.function_call_id()
        return endpoint.respond(  # type: ignore[no-any-return]
            head, body, emit, lambda coro: self.run_coro(coro, seq), fetch
        )

    def _run_generator(self, fn: Callable[..., Any], seq: int, args: Any, kwargs: Any) -> None:
        from vivace._sdk.serialization import serialize

        gen = fn(*args, **kwargs)
        if inspect.isasyncgen(gen):
            items: Any = _iter_async(gen, self, seq)
        elif inspect.isgenerator(gen):
            items = gen
        else:
            raise TypeError("a function declared as a generator must yield")
        sock = self.sock_for_thread()
        for part, value in enumerate(items):
            sock.exchange(
                {
                    "outputs": [{"seq": seq, "part": part, "status": "item", "blob": 0}],
                    "want": 0,
                    "wait": 0,
                },
                [serialize(value)],
            )

    # -- the loops ---------------------------------------------------------------------------------
    def serve(self) -> None:
        if self.spec.get("batch_max_size"):
            self.serve_batched()
        elif self.spec.get("max_inputs", 1) > 1:
            self.serve_concurrent()
        else:
            self.serve_sequential()

    def serve_sequential(self) -> None:
        """One input at a time; outputs go back with the next lease (one round trip per input)."""
        single_use = bool(self.spec.get("single_use_containers"))
        outputs: List[Dict[str, Any]] = []
        blobs: List[bytes] = []

        def emit(out: Dict[str, Any], data: Optional[bytes]) -> None:
            if data is not None:
                out["blob"] = len(blobs)
                blobs.append(data)
            outputs.append(out)

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
                self.busy = True
                try:
                    self.run_one(item, payloads[item["blob"]], emit)
                finally:
                    self.busy = False
                served += 1

    def serve_concurrent(self) -> None:
        """Up to ``max_inputs`` inputs at once: coroutines as tasks on the event loop, everything else
        in threads. Each output goes back as soon as it is ready, from the thread that made it."""
        max_inputs = int(self.spec["max_inputs"])
        pool = concurrent.futures.ThreadPoolExecutor(max_inputs, thread_name_prefix="vivace-input")
        slots = threading.Condition()
        running: set[int] = set()

        def emit(out: Dict[str, Any], data: Optional[bytes]) -> None:
            if data is not None:
                out["blob"] = 0
            try:
                self.sock_for_thread().exchange(
                    {"outputs": [out], "want": 0, "wait": 0}, [data] if data is not None else []
                )
            except SocketError as err:
                sys.stderr.write(f"vivace: could not hand in the output of input {out['seq']}: {err}\n")
            finally:
                with slots:
                    running.discard(out["seq"])
                    slots.notify()

        try:
            while not self.stopping:
                with slots:
                    while len(running) >= max_inputs:
                        slots.wait()
                    want, held = max_inputs - len(running), sorted(running)
                header, payloads = self.sock.exchange(
                    {"outputs": [], "want": want, "wait": LEASE_WAIT, "held": held, "exact": True}, []
                )
                for item in header.get("inputs", []):
                    with slots:
                        running.add(item["seq"])
                    payload = payloads[item["blob"]]
                    if not (self._is_coroutine_call(payload) and self._start_task(item, payload, emit)):
                        pool.submit(self.run_one, item, payload, emit)
        except SystemExit:
            self.stopping = True  # SIGTERM while waiting for inputs: finish the running ones
        pool.shutdown(wait=True)
        with slots:
            while running:  # tasks still on the event loop
                slots.wait()

    def _is_coroutine_call(self, payload: bytes) -> bool:
        try:
            fn, _, _, is_gen = self.target(payload)
        except BaseException:
            return False
        return not is_gen and inspect.iscoroutinefunction(fn)

    def _start_task(
        self, item: Dict[str, Any], payload: bytes, emit: Callable[[Dict[str, Any], Optional[bytes]], None]
    ) -> bool:
        """Run a coroutine input as a task on the event loop; False if it could not even be created."""
        from vivace._sdk.serialization import pack_exception, serialize

        seq = item["seq"]
        started = time.monotonic()
        try:
            fn, args, kwargs, _ = self.target(payload)
            coro = fn(*args, **kwargs)
        except BaseException:
            return False
        fut = asyncio.run_coroutine_threadsafe(_with_context(coro, f"in-{seq}", item["call"]), self.loop())
        self.cancellers[seq] = fut.cancel

        def done(f: "concurrent.futures.Future[Any]") -> None:
            self.cancellers.pop(seq, None)
            status, data, error = OutputStatus.SUCCESS.value, None, None
            try:
                data = serialize(f.result())
            except BaseException as err:
                if isinstance(err, concurrent.futures.CancelledError):
                    from vivace.exception import InputCancellation

                    err = InputCancellation("the input was cancelled")
                status = OutputStatus.CANCELLED.value if seq in self.cancelled else OutputStatus.FAILURE.value
                error, data = pack_exception(err)
            # hand in from a pool thread: never block the event loop on the worker socket
            threading.Thread(
                target=emit, args=(_output(seq, status, error, started), data), daemon=True
            ).start()

        fut.add_done_callback(done)
        return True

    def serve_batched(self) -> None:
        """Lease up to ``batch_max_size`` inputs, waiting ``batch_wait_ms`` after the first for more, and
        call the function once with lists; one output per input, in order."""
        size = int(self.spec["batch_max_size"])
        wait = int(self.spec.get("batch_wait_ms", 0)) / 1000.0
        outputs: List[Dict[str, Any]] = []
        blobs: List[bytes] = []
        while True:
            want = 0 if self.stopping else size
            header, payloads = self.sock.exchange(
                {
                    "outputs": outputs,
                    "want": want,
                    "wait": LEASE_WAIT if want else 0,
                    "held": [],
                    "exact": True,
                },
                blobs,
            )
            outputs, blobs = [], []
            if want == 0:
                return
            batch = [(item, payloads[item["blob"]]) for item in header.get("inputs", [])]
            deadline = time.monotonic() + wait
            while batch and len(batch) < size and not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                held = [item["seq"] for item, _ in batch]
                more, more_payloads = self.sock.exchange(
                    {"outputs": [], "want": size - len(batch), "wait": left, "held": held, "exact": True}, []
                )
                batch += [(item, more_payloads[item["blob"]]) for item in more.get("inputs", [])]
            if batch:
                self.busy = True
                try:
                    for out, data in self.run_batch(batch):
                        if data is not None:
                            out["blob"] = len(blobs)
                            blobs.append(data)
                        outputs.append(out)
                finally:
                    self.busy = False

    def run_batch(
        self, batch: List[Tuple[Dict[str, Any], bytes]]
    ) -> List[Tuple[Dict[str, Any], Optional[bytes]]]:
        from vivace._sdk.serialization import pack_exception, serialize

        started = time.monotonic()
        seqs = [item["seq"] for item, _ in batch]
        context.set_input(f"in-{seqs[0]}", batch[0][0]["call"])
        try:
            fn = None
            calls = []
            for _, payload in batch:
                fn, args, kwargs, _ = self.target(payload)
                calls.append((args, kwargs))
            assert fn is not None
            pos, kw = _columns(fn, calls)
            result = fn(*pos, **kw)
            if inspect.iscoroutine(result):
                result = self.run_coro(result)
            if not isinstance(result, (list, tuple)) or len(result) != len(batch):
                got = f"{len(result)} results" if isinstance(result, (list, tuple)) else type(result).__name__
                raise TypeError(
                    f"a batched function must return a list with one result per input: "
                    f"got {got} for {len(batch)} inputs"
                )
            return [
                (_output(seq, OutputStatus.SUCCESS.value, None, started), serialize(value))
                for seq, value in zip(seqs, result, strict=True)
            ]
        except BaseException as err:  # the whole batch failed: every caller gets the error
            if isinstance(err, SystemExit) and self.stopping:
                raise
            error, data = pack_exception(err)
            return [(_output(seq, OutputStatus.FAILURE.value, error, started), data) for seq in seqs]
        finally:
            context.set_input(None, None)

    def fail_all(self, err: BaseException) -> None:
        """The function could not be loaded (import or ``@enter`` failed): fail the inputs waiting for
        it with the traceback, instead of crash-looping. ``init_failed`` keeps this container from
        counting as started, so repeated failures stop the autoscaler from keeping containers up."""
        from vivace._sdk.serialization import pack_exception

        error, blob = pack_exception(err)
        header, _ = self.sock.exchange(
            {"outputs": [], "want": MAX_BATCH, "wait": 5, "held": [], "exact": True, "init_failed": True}, []
        )
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


def _output(seq: int, status: str, error: Optional[str], started: float) -> Dict[str, Any]:
    return {
        "seq": seq,
        "part": FINAL,
        "status": status,
        "error": error,
        "duration": time.monotonic() - started,
    }


async def _with_context(coro: Any, input_id: Optional[str], call_id: Optional[str]) -> Any:
    context.set_input(input_id, call_id)  # this task's own context
    return await coro


def _iter_async(agen: Any, rt: Runtime, seq: int) -> Iterator[Any]:
    while True:
        try:
            yield rt.run_coro(agen.__anext__(), seq)
        except StopAsyncIteration:
            return


def _raise_in(thread_id: int) -> None:
    from vivace.exception import InputCancellation

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(InputCancellation))


def _columns(fn: Callable[..., Any], calls: List[Tuple[Any, Any]]) -> Tuple[List[Any], Dict[str, Any]]:
    """Per-input arguments of a batched function as one list per parameter."""
    sig = inspect.signature(fn)
    names = [p for p in sig.parameters.values()]
    cols: Dict[str, List[Any]] = {p.name: [] for p in names}
    for args, kwargs in calls:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        for p in names:
            cols[p.name].append(bound.arguments[p.name])
    pos = [cols[p.name] for p in names if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    kw = {p.name: cols[p.name] for p in names if p.kind == p.KEYWORD_ONLY}
    return pos, kw


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
    from vivace._sdk import compat

    compat.install()  # user code written for Modal (`import modal`) runs unchanged
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
        rt.busy = True  # loading (and @enter) finishes before SIGTERM stops the container
        rt.load()
    except (SocketError, SystemExit):
        raise
    except BaseException as err:
        traceback.print_exc()
        rt.fail_all(err)
        raise SystemExit(1) from None
    finally:
        rt.busy = False
    try:
        if rt.stopping:
            return
        rt.serve()
    except SocketError as err:
        if err.status == 410:  # our lease was revoked: the control plane has replaced us
            raise SystemExit(0) from None
        raise
    finally:
        rt.run_exit_hooks()


if __name__ == "__main__":
    main()
