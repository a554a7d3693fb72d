"""A sandbox on its worker: its main process, the processes exec'd into it, their streams, its files, and
the timeouts the worker enforces whether or not a client is still there.

Streams are read by offset (``StreamBuffer``): a client asks for bytes from an offset, which also
acknowledges everything before it, so a retried read is answered again and memory stays bounded.
Exec'd processes have pipe semantics: when a reader falls ``EXEC_BUFFER`` behind, the process blocks
on its next write. The main process never blocks (a server in a sandbox must not stall because nobody
reads it): beyond ``MAIN_BUFFER`` its oldest unread output is dropped, and readers are told how much;
every line of it is also in the sandbox's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from vivace.protocol import sandboxes as proto
from vivace.worker.runtimes.base import ExitStatus
from vivace.worker.runtimes.oci import FS_HELPER, python_of
from vivace.worker.supervisor import ContainerSupervisor

log = logging.getLogger("vivace.worker")

EXEC_BUFFER = 4 << 20  # bytes of unread output per exec'd stream before the process blocks
MAIN_BUFFER = 16 << 20  # bytes of unread main-process output per stream before the oldest is dropped
MAX_EXECS = 256  # processes exec'd into one sandbox that may run at once
FS_TIMEOUT = 60.0
FS_OUT_LIMIT = proto.MAX_FS_CHUNK + (1 << 20)  # a listing of a huge directory is cut off here
TICK = 0.25


class SandboxRequestError(Exception):
    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


class StreamBuffer:
    def __init__(self, cap: int, *, drop: bool) -> None:
        self.cap = cap
        self.drop = drop
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        self.eof = False
        self.dropped = 0
        self._changed = asyncio.Event()
        self._room = asyncio.Event()

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def _wake(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def pump(
        self, reader: asyncio.StreamReader | None, on_data: Callable[[bytes], None] | None
    ) -> None:
        try:
            while reader is not None:
                while not self.drop and len(self.buf) >= self.cap:  # a pipe: the writer waits for readers
                    self._room.clear()
                    await self._room.wait()
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                self.buf += chunk
                if on_data is not None:
                    on_data(chunk)
                if self.drop and len(self.buf) > self.cap:
                    n = len(self.buf) - self.cap
                    del self.buf[:n]
                    self.base += n
                    self.dropped += n
                self._wake()
        finally:
            self.eof = True
            self._wake()

    async def read(self, offset: int, limit: int, wait: float) -> tuple[int, bytes, bool]:
        """Bytes from ``offset`` (at most ``limit``), waiting up to ``wait`` s for some; everything before
        ``offset`` is acknowledged and freed. Returns (offset of the bytes, bytes, at end of stream)."""
        offset = min(offset, self.end)
        if offset > self.base:
            del self.buf[: offset - self.base]
            self.base = offset
            self._room.set()
        start = max(offset, self.base)  # a reader that fell behind a dropping buffer skips ahead
        if start == self.end and not self.eof and wait > 0:
            ev = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), wait)
            start = max(start, self.base)
        i = start - self.base
        data = bytes(self.buf[i : i + limit])
        return start, data, self.eof and start + len(data) == self.end


class SandboxProcess:
    """The main process or one exec'd into the sandbox: its streams, its stdin, its exit code."""

    def __init__(self, pid: str, stdin: asyncio.StreamWriter | None, drop: bool) -> None:
        cap = MAIN_BUFFER if drop else EXEC_BUFFER
        self.pid = pid
        self.streams = {name: StreamBuffer(cap, drop=drop) for name in proto.STREAMS}
        self.stdin = stdin
        self.stdin_offset = 0
        self.returncode: int | None = None
        self.socket: Any = None  # a tunnel connection's socket (kept alive with it)
        self.writer: asyncio.StreamWriter | None = None  # a tunnel connection's (open after a half-close)
        self.done = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    def finish(self, code: int | None) -> None:
        self.returncode = code
        self.done.set()

    async def write(self, offset: int, data: bytes, eof: bool) -> int:
        if offset > self.stdin_offset:
            raise SandboxRequestError(
                f"stdin write at offset {offset} leaves a gap (the process has {self.stdin_offset} bytes)"
            )
        data = data[self.stdin_offset - offset :]  # a retried write: only what was not written yet
        if self.stdin is None:
            if data or not eof:
                raise SandboxRequestError("the process's stdin is closed", "stdin_closed")
            return self.stdin_offset
        try:
            if data:
                self.stdin.write(data)
                await self.stdin.drain()
                self.stdin_offset += len(data)
            if eof:
                if self.socket is not None and self.stdin.can_write_eof():
                    self.stdin.write_eof()  # a tunnel's connection: half-closed, its answer still comes
                else:
                    self.stdin.close()
                self.stdin = None
        except (BrokenPipeError, ConnectionResetError, RuntimeError):  # RuntimeError: a closed transport
            self.stdin = None
            raise SandboxRequestError(
                "the process has closed its stdin (or exited)", "stdin_closed"
            ) from None
        return self.stdin_offset


class _QuietEof(asyncio.StreamReaderProtocol):
    """A terminal's master end reads EIO once its process has gone: that is its end of file."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(None if isinstance(exc, OSError) else exc)


class _TerminalInput:
    """What is typed into a terminal (a blocking write of the master end, off the loop); its end of
    input is Ctrl-D, as on a terminal, not a hang-up."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        self.pending += data

    async def drain(self) -> None:
        data, self.pending = bytes(self.pending), bytearray()
        view = memoryview(data)
        while view:
            n = await asyncio.to_thread(os.write, self.fd, view)
            view = view[n:]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.fd, b"\x04")
        self.release()

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class SandboxSupervisor(ContainerSupervisor):
    """A sandbox's container: the user's command as its main process, driven over the worker channel."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        settings = self.fspec["sandbox"]
        self.spec.command = list(settings.get("command") or [])
        self.spec.cwd = settings.get("workdir")
        self.spec.cidr_allowlist = settings.get("cidr_allowlist")
        self.spec.tty = bool(settings.get("pty"))
        self.timeout = float(self.fspec.get("timeout") or 300)
        self.idle_timeout = settings.get("idle_timeout")
        self.procs: dict[str, SandboxProcess] = {}
        self._execs = 0
        self.started = time.monotonic()
        self.last_active = time.monotonic()

    async def start(self) -> None:
        if self.spec.cidr_allowlist is not None and not self.runtime.capabilities.network_isolation:
            raise RuntimeError(f"the {self.runtime.name!r} runtime cannot restrict a sandbox's network")
        if not self.runtime.capabilities.sandboxes:
            raise RuntimeError(
                f"the {self.runtime.name!r} runtime cannot run sandboxes; run the worker with runsc, crun or runc"
            )
        self.spec.workdir.mkdir(parents=True, exist_ok=True)
        self.spec.socket_path.parent.mkdir(mode=0o755, exist_ok=True)  # unused: a sandbox has no socket
        reserve = getattr(self.runtime, "reserve", None)
        if reserve is not None:  # a warm sandbox may take this one
            reserve(self.spec)
        try:
            await self._mount_volumes()
            self.handle = await self.runtime.start(self.spec)
        except BaseException:
            for mount in self.volumes.values():
                shutil.rmtree(mount.root, ignore_errors=True)
            raise
        (self.spec.workdir / "pid").write_text(str(self.handle.pid))
        try:  # exec needs the runtime's state of the container: report it started only once that exists
            if not getattr(self.handle, "created", False):
                await self.runtime.wait_created(self.handle)  # type: ignore[attr-defined]
        except BaseException:
            self.handle.kill()
            await self.handle.wait()
            raise
        self.started = self.last_active = time.monotonic()
        proc = getattr(self.handle, "proc", None)
        master = getattr(self.handle, "tty_master", None)
        if master is not None:  # on a terminal: one output, and stdin typed into it
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: _QuietEof(reader), os.fdopen(master, "rb", buffering=0))
            main = SandboxProcess(proto.MAIN, _TerminalInput(os.dup(master)), drop=True)  # type: ignore[arg-type]
            streams: tuple[tuple[str, Any], ...] = (("stdout", reader), ("stderr", None))
        else:
            main = SandboxProcess(proto.MAIN, getattr(proc, "stdin", None), drop=True)
            streams = (("stdout", self.handle.stdout), ("stderr", self.handle.stderr))
        for name, stream in streams:
            main.tasks.append(asyncio.create_task(self._pump_main(main.streams[name], stream, name)))
        self.procs[proto.MAIN] = main  # requests may come as soon as the control plane hears it started

    async def run(self) -> ExitStatus:
        assert self.handle is not None
        main = self.procs[proto.MAIN]
        watchdog = asyncio.create_task(self._enforce_timeouts())
        try:
            status = await self.handle.wait()
        finally:
            watchdog.cancel()
        main.finish(status.code)
        if isinstance(main.stdin, _TerminalInput):
            main.stdin.release()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*main.tasks), 2)
        for p in self.procs.values():  # exec'd processes died with the container
            if not p.done.is_set():
                p.finish(137)
            for t in p.tasks:
                t.cancel()
        await self._unmount_volumes()
        shutil.rmtree(self.spec.workdir, ignore_errors=True)
        shutil.rmtree(self.spec.socket_path.parent, ignore_errors=True)
        if self.stop_reason is not None:
            return ExitStatus(status.code, "stopped: " + self.stop_reason)
        return status

    async def _pump_main(self, buf: StreamBuffer, reader: Any, stream: str) -> None:
        """The main process's stream into its buffer, and line by line into the sandbox's logs (a last
        line without a newline too)."""
        pending = bytearray()

        def log_line(line: bytes | bytearray) -> None:
            self.logs.add(
                self.app_id, self.function_id, self.id, None, stream, line.decode("utf-8", "replace")
            )

        def add(chunk: bytes) -> None:
            pending.extend(chunk)
            *lines, rest = pending.split(b"\n")
            for line in lines:
                log_line(line)
            pending[:] = rest[-65536:]

        try:
            await buf.pump(reader, add)
        finally:
            if pending:
                log_line(bytes(pending))

    async def _enforce_timeouts(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            if now - self.started > self.timeout:
                self._end(f"timeout: the sandbox reached its timeout of {self.timeout:g} s")
                return
            busy = any(not p.done.is_set() for pid, p in self.procs.items() if pid != proto.MAIN)
            if busy:
                self.last_active = now
            elif self.idle_timeout and now - self.last_active > float(self.idle_timeout):
                self._end(f"idle timeout: nothing ran in the sandbox for {float(self.idle_timeout):g} s")
                return

    def _end(self, reason: str) -> None:
        log.info("sandbox container %s: %s", self.id, reason)
        self.logs.add(self.app_id, self.function_id, self.id, None, "system", reason)
        self.kill(reason)

    def buffered(self) -> int:
        """Bytes of output held for readers."""
        return sum(len(b.buf) for p in self.procs.values() for b in p.streams.values())

    # -- requests from the channel -----------------------------------------------------------------
    async def request(self, msg: dict[str, Any], data: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        self.last_active = time.monotonic()
        kind = msg.get("type")
        if kind == "sb_exec":
            return {"process_id": await self.exec(msg)}, []
        if kind == "sb_connect":
            return {"process_id": await self.connect(int(msg["port"]))}, []
        if kind == "sb_close":
            proc = self.procs.get(str(msg.get("process_id")))
            if proc is not None and proc.pid.startswith("tc-") and proc.writer is not None:
                proc.writer.close()
                proc.stdin = None
            return {}, []
        if kind == "sb_snapshot":
            return await self.snapshot(), []
        if kind == "sb_fs":
            result, out = await self.filesystem(str(msg["op"]), str(msg["path"]), dict(msg.get("args") or {}),
                                                data[0] if data else b"")  # fmt: skip
            return {"result": result}, [out]
        proc = self.procs.get(str(msg.get("process_id")))
        if proc is None:
            raise SandboxRequestError(f"no process {msg.get('process_id')!r} in this sandbox", "not_found")
        if kind == "sb_read":
            stream = proc.streams[str(msg["stream"])]
            wait = float(msg.get("wait") or 0)
            offset, chunk, eof = await stream.read(
                int(msg["offset"]), int(msg.get("max") or proto.MAX_CHUNK), wait
            )
            return {"offset": offset, "eof": eof, "dropped": stream.dropped}, [chunk]
        if kind == "sb_write":
            done = await proc.write(int(msg["offset"]), data[0] if data else b"", bool(msg.get("eof")))
            return {"offset": done}, []
        if kind == "sb_wait":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.done.wait(), float(msg.get("wait") or 0) or 0.001)
            return {"returncode": proc.returncode}, []
        raise SandboxRequestError(f"unknown sandbox request {kind!r}")

    def _live(self) -> Any:
        if self.handle is None or self.stop_reason is not None or proto.MAIN not in self.procs:
            raise SandboxRequestError("the sandbox is not running", "sandbox_not_running")
        if self.procs[proto.MAIN].done.is_set():
            raise SandboxRequestError("the sandbox has finished", "sandbox_not_running")
        return self.handle

    async def exec(self, msg: dict[str, Any]) -> str:
        handle = self._live()
        if sum(1 for p in self.procs.values() if not p.done.is_set()) > MAX_EXECS:
            raise SandboxRequestError(f"at most {MAX_EXECS} processes may run in one sandbox at once", "busy")
        self._execs += 1
        pid = f"ex-{self._execs}"
        if msg.get("pty"):
            return await self._exec_tty(handle, pid, msg)
        proc, pid_file = await self.runtime.spawn(  # type: ignore[attr-defined]
            handle, list(msg["argv"]), env=dict(msg.get("env") or {}), cwd=msg.get("workdir")
        )
        sp = SandboxProcess(pid, proc.stdin, drop=False)
        for name in msg.get("discard") or ():  # StreamType.DEVNULL: read and dropped, never blocking
            sp.streams[name] = StreamBuffer(0, drop=True)
        self.procs[pid] = sp
        for name in proto.STREAMS:
            sp.tasks.append(asyncio.create_task(sp.streams[name].pump(getattr(proc, name), None)))
        sp.tasks.append(asyncio.create_task(self._reap(sp, proc, pid_file, msg.get("timeout"))))
        return pid

    async def _exec_tty(self, handle: Any, pid: str, msg: dict[str, Any]) -> str:
        """An exec'd process on a terminal: one output stream (stdout), stdin typed into the terminal."""
        proc, pid_file, master = await self.runtime.spawn_tty(  # type: ignore[attr-defined]
            handle, list(msg["argv"]), env=dict(msg.get("env") or {}), cwd=msg.get("workdir")
        )
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: _QuietEof(reader), os.fdopen(master, "rb", buffering=0))
        sp = SandboxProcess(pid, _TerminalInput(os.dup(master)), drop=False)  # type: ignore[arg-type]
        sp.streams["stderr"].eof = True  # a terminal has one output
        self.procs[pid] = sp
        sp.tasks.append(asyncio.create_task(sp.streams["stdout"].pump(reader, None)))
        sp.tasks.append(asyncio.create_task(sp.streams["stderr"].pump(None, None)))
        sp.tasks.append(asyncio.create_task(self._reap(sp, proc, pid_file, msg.get("timeout"))))
        return pid

    async def _reap(self, sp: SandboxProcess, proc: Any, pid_file: Any, timeout: float | None) -> None:
        try:
            code = await asyncio.wait_for(proc.wait(), timeout) if timeout else await proc.wait()
        except TimeoutError:
            await self.runtime.kill_exec(self.handle, pid_file)  # type: ignore[attr-defined]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = 124  # as timeout(1) reports it
            self.logs.add(self.app_id, self.function_id, self.id, None, "system",
                          f"exec'd process {sp.pid} reached its timeout of {timeout:g} s and was killed")  # fmt: skip
        # the command's output may still be in flight: the streams end when the pipes close
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*sp.tasks[:2]), 5)
        sp.finish(code if code >= 0 else 128 - code)
        if isinstance(sp.stdin, _TerminalInput):
            sp.stdin.release()
        with contextlib.suppress(OSError):
            pid_file.unlink()

    async def connect(self, port: int) -> str:
        """A TCP connection to ``port`` inside the sandbox, as a process ``tc-N``: its stdout is what the
        sandbox sends, its stdin what it receives (a tunnel's request)."""
        handle = self._live()
        if not 1 <= port <= 65535:
            raise SandboxRequestError(f"no port {port}")
        try:
            sock = await self.runtime.connect(handle, port)  # type: ignore[attr-defined]
        except (OSError, RuntimeError) as err:
            raise SandboxRequestError(
                f"cannot connect to port {port} in the sandbox: {err}", "refused"
            ) from None
        reader, writer = await asyncio.open_connection(sock=sock)
        self._execs += 1
        pid = f"tc-{self._execs}"
        conn = SandboxProcess(pid, writer, drop=False)
        conn.socket = sock  # the loop's transport uses its descriptor: collecting it would close that
        conn.writer = writer
        conn.streams["stderr"].eof = True  # a connection has one stream back
        self.procs[pid] = conn

        async def pump() -> None:
            try:
                await conn.streams["stdout"].pump(reader, None)
            finally:
                writer.close()
                conn.stdin = None
                conn.socket.close()
                conn.finish(0)

        conn.tasks.append(asyncio.create_task(pump()))
        return pid

    async def snapshot(self) -> dict[str, Any]:
        """The sandbox's writable layer, uploaded to the blob store: {"digest", "size"}."""
        handle = self._live()
        if self.spec.image is None:
            raise SandboxRequestError(
                "snapshot_filesystem needs a sandbox started from an Image (image=...): the worker's "
                "default root filesystem is not an image others can start from"
            )
        # what the sandbox wrote but its kernel (gVisor's included) still holds reaches the disk first
        sync, pid_file = await self.runtime.spawn(  # type: ignore[attr-defined]
            handle, [python_of(self.spec), "-I", "-S", "-c", "import os; os.sync()"], env={}, cwd=None
        )
        await asyncio.wait_for(self._communicate(sync, b""), FS_TIMEOUT)
        path = self.spec.workdir / "snapshot.layer"
        try:
            with path.open("wb") as out:
                digest = await asyncio.to_thread(self.runtime.snapshot, handle, out)  # type: ignore[attr-defined]
            size = path.stat().st_size
            await self.api.put_file(f"/v1/blobs/{digest}", path)
        finally:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                pid_file.unlink()
        log.info("sandbox container %s: snapshot of %d bytes (%s)", self.id, size, digest[:12])
        return {"digest": digest, "size": size}

    async def filesystem(self, op: str, path: str, args: dict[str, Any], data: bytes) -> tuple[Any, bytes]:
        handle = self._live()
        argv = [python_of(self.spec), "-I", "-S", FS_HELPER, op, path, json.dumps(args)]
        proc, pid_file = await self.runtime.spawn(handle, argv, env={}, cwd=None)  # type: ignore[attr-defined]
        try:
            out = await asyncio.wait_for(self._communicate(proc, data), FS_TIMEOUT)
        except TimeoutError:
            await self.runtime.kill_exec(handle, pid_file)  # type: ignore[attr-defined]
            proc.kill()
            raise SandboxRequestError(
                f"the file operation {op} {path} took over {FS_TIMEOUT:g} s", "timeout"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                pid_file.unlink()
        head, _, rest = out.partition(b"\n")
        try:
            result = json.loads(head)
        except ValueError:
            raise SandboxRequestError(
                f"the file helper failed in the sandbox (does its image have {python_of(self.spec)}?): "
                f"{out[:300].decode(errors='replace')}", "fs_failed"
            ) from None  # fmt: skip
        return result, rest

    @staticmethod
    async def _communicate(proc: Any, data: bytes) -> bytes:
        async def feed() -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if data:
                    proc.stdin.write(data)
                    await proc.stdin.drain()
                proc.stdin.close()

        feeder = asyncio.create_task(feed())
        errors = asyncio.create_task(proc.stderr.read(1 << 16))  # the runtime's own complaints, if any
        out = bytearray()
        while len(out) <= FS_OUT_LIMIT:
            chunk = await proc.stdout.read(1 << 20)
            if not chunk:
                break
            out += chunk
        else:
            proc.kill()
        await proc.wait()
        await feeder
        err = await errors
        return bytes(out) if out else err
