"""``vivace.Sandbox``: a container for untrusted code, driven from outside (Modal's ``modal.Sandbox``).

``Sandbox.create("python", "-m", "http.server", app=app)`` starts a container whose main process is that
command (with no command it idles); ``sb.exec("ls", "-l")`` runs more processes in it, with streamed
``stdout``/``stderr`` and a writable ``stdin``; ``sb.filesystem`` reads and writes its files. Sandboxes
run under gVisor (runsc) where the worker has it, else crun or runc, with no capabilities, a seccomp
profile, limits on memory, cpu and processes, and no access to Vivace's API. The worker enforces
``timeout`` and ``idle_timeout`` even when the client is gone.
"""

from __future__ import annotations

import asyncio
import codecs
import enum
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from vivace import exception as exc
from vivace._sdk import params
from vivace._sdk.connection import get_client
from vivace._sync import iter_async, iter_sync, run_sync, synchronized
from vivace.protocol import sandboxes as proto
from vivace.protocol.functions import FunctionSpec, SpecError

__all__ = ["ContainerProcess", "Probe", "Sandbox", "SandboxFilesystem", "StreamType", "Tunnel"]

READ_WAIT = 20.0  # seconds one read long-polls the worker
WAIT_STEP = 45.0  # seconds one wait long-polls the control plane
DEFAULT_TIMEOUT = 300


class StreamType(enum.Enum):
    """Where an exec'd process's output goes: kept for reading (``PIPE``), printed here as it arrives
    (``STDOUT``), or dropped by the worker (``DEVNULL``)."""

    PIPE = "pipe"
    STDOUT = "stdout"
    DEVNULL = "devnull"


def _sandbox_error(err: exc.Error) -> exc.Error:
    """Errors of a finished sandbox become ``SandboxTerminatedError``."""
    if getattr(err, "code", "") == "sandbox_not_running":
        return exc.SandboxTerminatedError(str(err))
    return err


async def _post(path: str, body: Any = None, **kw: Any) -> Any:
    api = await get_client()
    try:
        return await api.post_json(path, body, **kw)
    except exc.Error as err:
        raise _sandbox_error(err) from None


async def _post_frames(path: str, header: dict[str, Any], blobs: list[bytes], **kw: Any) -> Any:
    api = await get_client()
    try:
        resp = await api.post_frames(path, header, blobs, **kw)
    except exc.Error as err:
        raise _sandbox_error(err) from None
    return resp


# -- streams ----------------------------------------------------------------------------------------
class StreamReader:
    """A process's stdout or stderr: ``read()`` everything, or iterate (lines with ``text=True``, else
    chunks of bytes). Reading is by offset, so a read the network interrupted is simply asked again."""

    def __init__(self, sandbox_id: str, process_id: str, stream: str, text: bool) -> None:
        self._path = f"/v1/sandboxes/{sandbox_id}/procs/{process_id}/read"
        self._stream = stream
        self._text = text
        self._offset = 0
        self._eof = False
        self._dropped = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    async def _chunk(self) -> bytes | None:
        """The next bytes, or None at the end of the stream."""
        while not self._eof:
            api = await get_client()
            try:
                raw = await api.request(
                    "POST",
                    self._path,
                    json_body={"stream": self._stream, "offset": self._offset, "wait": READ_WAIT},
                    timeout=READ_WAIT + 40,
                    retry_for=60,
                )
            except exc.Error as err:
                raise _sandbox_error(err) from None
            header, blobs = api.decode_frames(raw)
            data = blobs[0] if blobs else b""
            start = int(header.get("offset") or 0)
            dropped = int(header.get("dropped") or 0)
            if dropped > self._dropped:
                if start > self._offset:
                    print(
                        f"vivace: {start - self._offset} bytes of the sandbox's {self._stream} were dropped "
                        "(unread output beyond 16 MiB)",
                        file=sys.stderr,
                    )
                self._dropped = dropped
            self._offset = start + len(data)
            self._eof = bool(header.get("eof"))
            if data:
                return data
        return None

    async def _read_all(self) -> Any:
        parts = []
        while (chunk := await self._chunk()) is not None:
            parts.append(chunk)
        data = b"".join(parts)
        return self._decoder.decode(data, final=True) if self._text else data

    @synchronized
    async def read(self) -> Any:
        """Everything until the stream ends (the process exits or closes it): ``str`` or ``bytes``."""
        return await self._read_all()

    async def _iterate(self) -> AsyncIterator[Any]:
        if not self._text:
            while (chunk := await self._chunk()) is not None:
                yield chunk
            return
        pending = ""
        while (chunk := await self._chunk()) is not None:
            pending += self._decoder.decode(chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                yield line + "\n"
        pending += self._decoder.decode(b"", final=True)
        if pending:
            yield pending

    def __iter__(self) -> Iterator[Any]:
        return iter_sync(self._iterate())

    def __aiter__(self) -> AsyncIterator[Any]:
        return iter_async(self._iterate())


class StreamWriter:
    """A process's stdin: ``write`` buffers, ``drain`` sends, ``write_eof`` closes it after the data."""

    def __init__(self, sandbox_id: str, process_id: str) -> None:
        self._path = f"/v1/sandboxes/{sandbox_id}/procs/{process_id}/stdin"
        self._buffer = bytearray()
        self._offset = 0  # bytes the process has taken
        self._eof = False
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview | str) -> None:
        if self._eof:
            raise exc.InvalidError("stdin is closed (write_eof was called)")
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise exc.InvalidError(f"stdin takes bytes or str, got {type(data).__name__}")
        self._buffer += data

    def write_eof(self) -> None:
        self._eof = True

    @synchronized
    async def drain(self) -> None:
        """Send what was written (and the end of input, after ``write_eof``)."""
        while self._buffer or (self._eof and not self._closed):
            chunk = bytes(self._buffer[: proto.MAX_CHUNK])
            last = len(chunk) == len(self._buffer)
            eof = self._eof and last
            reply = await _post_frames(
                self._path, {"offset": self._offset, "eof": eof}, [chunk] if chunk else [], retry_for=60
            )
            taken = int(reply.json()["offset"]) - self._offset
            del self._buffer[:taken]
            self._offset += taken
            if eof:
                self._closed = True


# -- processes --------------------------------------------------------------------------------------
class ContainerProcess:
    """A process in a sandbox (``Sandbox.exec``): its streams, ``wait()``, ``poll()``, ``returncode``."""

    def __init__(
        self, sandbox_id: str, process_id: str, text: bool, stdout: StreamType, stderr: StreamType
    ) -> None:
        self.sandbox_id = sandbox_id
        self.process_id = process_id
        self.stdout = StreamReader(sandbox_id, process_id, "stdout", text)
        self.stderr = StreamReader(sandbox_id, process_id, "stderr", text)
        self.stdin = StreamWriter(sandbox_id, process_id)
        self.returncode: int | None = None
        self._printers = [
            asyncio.ensure_future(_print_stream(reader, out))
            for reader, mode, out in ((self.stdout, stdout, sys.stdout), (self.stderr, stderr, sys.stderr))
            if mode is StreamType.STDOUT
        ]

    def __repr__(self) -> str:
        return f"ContainerProcess({self.sandbox_id}, {self.process_id}, returncode={self.returncode})"

    async def _wait_once(self, wait: float) -> int | None:
        reply = await _post(
            f"/v1/sandboxes/{self.sandbox_id}/procs/{self.process_id}/wait",
            {"wait": wait},
            timeout=wait + 40,
            retry_for=60,
        )
        code = reply.get("returncode")
        if code is not None:
            self.returncode = int(code)
            if self._printers:
                await asyncio.gather(*self._printers, return_exceptions=True)
        return self.returncode

    @synchronized
    async def wait(self) -> int:
        """Block until the process exits; its exit code."""
        while self.returncode is None:
            await self._wait_once(WAIT_STEP)
        return self.returncode

    @synchronized
    async def poll(self) -> int | None:
        """The exit code if the process has exited, else None (does not block)."""
        if self.returncode is None:
            await self._wait_once(0)
        return self.returncode


async def _print_stream(reader: StreamReader, out: Any) -> None:
    async for piece in reader._iterate():
        out.write(piece if isinstance(piece, str) else piece.decode("utf-8", "replace"))
        out.flush()


# -- readiness ---------------------------------------------------------------------------------------
class Probe:
    """How ``Sandbox.wait_until_ready`` knows the sandbox is ready: a TCP port accepts connections, or a
    command exits 0. Checked inside the sandbox every ``interval_ms``."""

    def __init__(self, kind: str, argv: list[str], interval_ms: int) -> None:
        self.kind = kind
        self.argv = argv
        self.interval_ms = interval_ms

    @classmethod
    def with_tcp(cls, port: int, *, interval_ms: int = 100) -> Probe:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise exc.InvalidError(f"Probe.with_tcp: port must be 1-65535, got {port!r}")
        return cls("tcp", [str(port)], _interval(interval_ms))

    @classmethod
    def with_exec(cls, *argv: str, interval_ms: int = 100) -> Probe:
        try:
            args = proto.check_argv(list(argv), "Probe.with_exec", allow_empty=False)
        except proto.SandboxSpecError as err:
            raise exc.InvalidError(str(err)) from None
        return cls("exec", args, _interval(interval_ms))

    def __repr__(self) -> str:
        return f"Probe.with_{self.kind}({', '.join(map(repr, self.argv))})"


def _interval(ms: Any) -> int:
    return int(params._integer("interval_ms", ms, 10, 60_000))


# the TCP probe runs in the sandbox's own Python (the image has one): connect to localhost:PORT
_TCP_PROBE = (
    "import socket, sys\n"
    "try:\n    socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()\n"
    "except OSError:\n    sys.exit(1)\n"
)


# -- files -------------------------------------------------------------------------------------------
class SandboxFilesystem:
    """A sandbox's files, read and written inside it as its user (``sb.filesystem``)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    async def _op(
        self, op: str, path: str, args: dict[str, Any], data: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        if not isinstance(path, str) or not path.startswith("/"):
            raise exc.InvalidError(f"sandbox paths are absolute, got {path!r}")
        resp = await _post_frames(
            f"/v1/sandboxes/{self._sb.object_id}/fs",
            {"op": op, "path": path, "args": args},
            [data] if data else [],
            timeout=120,
            retry_for=0 if op in ("write", "remove") else 30,
        )
        api = await get_client()
        header, blobs = api.decode_frames(resp)
        result = header.get("result") or {}
        if not result.get("ok"):
            errno, message = int(result.get("errno") or 0), str(result.get("error") or "failed")
            if errno == 2:
                raise exc.SandboxFilesystemNotFoundError(message)
            if errno in (1, 13, 30):  # EPERM, EACCES, EROFS
                raise exc.SandboxFilesystemPermissionError(message)
            raise exc.SandboxFilesystemError(message)
        return result, blobs[0] if blobs else b""

    @synchronized
    async def read_bytes(self, path: str) -> bytes:
        parts, offset = [], 0
        while True:
            result, data = await self._op("read", path, {"offset": offset, "length": proto.MAX_FS_CHUNK})
            parts.append(data)
            offset += len(data)
            if not data or offset >= int(result["size"]):
                return b"".join(parts)

    @synchronized
    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read_bytes.aio(path)).decode(encoding)

    @synchronized
    async def write_bytes(self, data: bytes, path: str) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise exc.InvalidError(f"write_bytes takes bytes, got {type(data).__name__}")
        view = memoryview(bytes(data))
        offset = 0
        while True:
            chunk = bytes(view[offset : offset + proto.MAX_FS_CHUNK])
            await self._op("write", path, {"offset": offset, "truncate": offset == 0}, chunk)
            offset += len(chunk)
            if offset >= len(view):
                return

    @synchronized
    async def write_text(self, data: str, path: str, encoding: str = "utf-8") -> None:
        if not isinstance(data, str):
            raise exc.InvalidError(f"write_text takes str, got {type(data).__name__}")
        await self.write_bytes.aio(data.encode(encoding), path)

    @synchronized
    async def copy_from_local(self, local_path: str | Path, remote_path: str) -> None:
        data = await asyncio.to_thread(Path(local_path).read_bytes)
        await self.write_bytes.aio(data, remote_path)

    @synchronized
    async def copy_to_local(self, remote_path: str, local_path: str | Path) -> None:
        data = await self.read_bytes.aio(remote_path)
        target = Path(local_path)
        tmp = target.with_name(target.name + ".vivace-part")
        await asyncio.to_thread(tmp.write_bytes, data)
        tmp.replace(target)  # never a half-written file at local_path

    @synchronized
    async def list_files(self, path: str) -> list[dict[str, Any]]:
        result, _ = await self._op("list", path, {})
        return list(result["entries"])

    @synchronized
    async def stat(self, path: str) -> dict[str, Any]:
        result, _ = await self._op("stat", path, {})
        return dict(result["entry"])

    @synchronized
    async def make_directory(self, path: str, create_parents: bool = True) -> None:
        await self._op("mkdir", path, {"parents": params.flag("create_parents", create_parents)})

    @synchronized
    async def remove(self, path: str, recursive: bool = False) -> None:
        await self._op("remove", path, {"recursive": params.flag("recursive", recursive)})


class Tunnel:
    """A way in to a port of a sandbox. ``url`` is an HTTP URL through the control plane (TLS where the
    control plane has it); ``host`` and ``port`` are the URL's. For ``unencrypted_ports``, ``tcp_socket``
    (``unencrypted_host``, ``unencrypted_port``) is an address on the control plane whose TCP connections
    reach the port, byte for byte."""

    def __init__(self, container_port: int, url: str, tcp: tuple[str, int] | None = None) -> None:
        from urllib.parse import urlsplit

        self.container_port = container_port
        self.url = url
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.unencrypted_host: str | None = tcp[0] if tcp is not None else None
        self.unencrypted_port: int | None = tcp[1] if tcp is not None else None

    @property
    def tls_socket(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def tcp_socket(self) -> tuple[str, int]:
        if self.unencrypted_host is None or self.unencrypted_port is None:
            raise exc.InvalidError(
                f"port {self.container_port} has no raw TCP tunnel: pass it in Sandbox.create(unencrypted_ports=...)"
            )
        return self.unencrypted_host, self.unencrypted_port

    def __repr__(self) -> str:
        tcp = f", tcp={self.unencrypted_host}:{self.unencrypted_port}" if self.unencrypted_host else ""
        return f"Tunnel(port={self.container_port}, url={self.url!r}{tcp})"


# -- the sandbox -------------------------------------------------------------------------------------
class Sandbox:
    """A running (or finished) sandbox. Create one with ``Sandbox.create``; find one with ``from_id``,
    ``from_name`` or ``list``."""

    def __init__(self, sandbox_id: str, info: dict[str, Any] | None = None) -> None:
        self.object_id = sandbox_id
        self._info = info or {}
        self.returncode: int | None = None
        self.filesystem = SandboxFilesystem(self)
        self.stdout = StreamReader(sandbox_id, proto.MAIN, "stdout", True)
        self.stderr = StreamReader(sandbox_id, proto.MAIN, "stderr", True)
        self.stdin = StreamWriter(sandbox_id, proto.MAIN)
        self._absorb(self._info)

    def __repr__(self) -> str:
        return f"Sandbox({self.object_id})"

    def _absorb(self, info: dict[str, Any]) -> None:
        if info:
            self._info = info
            if info.get("state") == "finished":
                self.returncode = info.get("returncode")
                if self.returncode is None:  # it never ran (failed to start) or was killed by the worker
                    self.returncode = -1 if info.get("result") == "error" else 137

    # -- creation and lookup
    @synchronized
    async def create(  # type: ignore[misc]
        cls,
        *args: str,
        app: Any = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        image: Any = None,
        env: dict[str, str] | None = None,
        secrets: Sequence[Any] | None = None,
        timeout: int = DEFAULT_TIMEOUT,
        idle_timeout: int | None = None,
        workdir: str | None = None,
        gpu: Any = None,
        cpu: Any = None,
        memory: Any = None,
        block_network: bool = False,
        outbound_cidr_allowlist: Sequence[str] | None = None,
        volumes: dict[str, Any] | None = None,
        pty: bool = False,
        encrypted_ports: Sequence[int] = (),
        unencrypted_ports: Sequence[int] = (),
        readiness_probe: Probe | None = None,
        ephemeral_disk: int | None = None,
        runtime: str | None = None,
    ) -> Sandbox:
        """Start a sandbox running ``args`` (none: it idles until terminated or timed out)."""
        from vivace.app import App, _lookup_app, resolve_storage
        from vivace.image import Image

        for what, ports in (("encrypted_ports", encrypted_ports), ("unencrypted_ports", unencrypted_ports)):
            try:
                proto.check_ports(list(ports), what)
            except (proto.SandboxSpecError, TypeError) as err:
                raise exc.InvalidError(str(err)) from None
        if outbound_cidr_allowlist is not None and block_network:
            raise exc.InvalidError("block_network=True and outbound_cidr_allowlist exclude each other")
        if isinstance(outbound_cidr_allowlist, str):
            raise exc.InvalidError("outbound_cidr_allowlist is a list of CIDRs, e.g. ['10.0.0.0/8']")
        if readiness_probe is not None and not isinstance(readiness_probe, Probe):
            raise exc.InvalidError(
                "readiness_probe must be a vivace.Probe (Probe.with_tcp or Probe.with_exec)"
            )
        if image is not None and not isinstance(image, Image):
            raise exc.InvalidError(f"image must be a vivace.Image, got {type(image).__name__}")
        if (
            not isinstance(timeout, (int, float))
            or isinstance(timeout, bool)
            or not 1 <= timeout <= proto.MAX_TIMEOUT
        ):
            raise exc.InvalidError(f"timeout must be from 1 to {proto.MAX_TIMEOUT} seconds, got {timeout!r}")
        cpu_req, cpu_limit = params.cpu(cpu) if cpu is not None else (0.125, None)
        mem_req, mem_limit = params.memory(memory) if memory is not None else (128, None)
        allow = None if outbound_cidr_allowlist is None else list(outbound_cidr_allowlist)
        settings = {
            "ports": sorted({*encrypted_ports, *unencrypted_ports}),
            "tcp_ports": sorted(set(unencrypted_ports)),
            "command": list(args),
            "workdir": workdir,
            "idle_timeout": idle_timeout,
            "cidr_allowlist": allow,
            "pty": params.flag("pty", pty),
        }
        try:
            settings = proto.check_settings(settings)
            name = proto.check_name(name)
            tags = proto.check_tags(tags)
        except proto.SandboxSpecError as err:
            raise exc.InvalidError(str(err)) from None
        app_id = await _app_id(app, App, _lookup_app)
        image_id, image_mounts = None, []
        if image is not None:
            from vivace._sdk import images
            from vivace._sdk.output import is_enabled

            image_id = await images.build(image, show_logs=is_enabled())
            image_mounts = image.mounts()
        secret_ids, mounts = await resolve_storage(
            app_id, params.secrets(secrets or []), params.volumes(volumes or {})
        )
        try:
            spec = FunctionSpec(
                name="sandbox",
                module="__sandbox__",
                qualname="sandbox",
                cpu=cpu_req,
                cpu_limit=cpu_limit,
                memory=mem_req,
                memory_limit=mem_limit,
                timeout=float(timeout),
                block_network=params.flag("block_network", block_network),
                env=params.env(env or {}),
                runtime=runtime,
                gpu=params.gpu(gpu),
                image_id=image_id,
                image_mounts=image_mounts,
                ephemeral_disk=params.ephemeral_disk(ephemeral_disk),
                secrets=secret_ids,
                volumes=mounts,
                sandbox=settings,
            )
            spec.validate()
        except SpecError as err:
            raise exc.InvalidError(str(err)) from None
        api = await get_client()
        try:
            res = await api.post_json(
                "/v1/sandboxes",
                {"app_id": app_id, "name": name, "tags": tags, "spec": spec.to_dict()},
                retry_for=0,
            )
        except exc.ConflictError as err:
            if getattr(err, "code", "") == "already_exists":
                raise exc.AlreadyExistsError(str(err)) from None
            raise
        sb = Sandbox(res["sandbox_id"], {})
        if readiness_probe is not None:
            sb._probe = readiness_probe
        return sb

    _probe: Probe | None = None

    @staticmethod
    def from_id(sandbox_id: str) -> Sandbox:
        """The sandbox with this id (running or finished)."""
        if not isinstance(sandbox_id, str) or not sandbox_id.startswith("sb-"):
            raise exc.InvalidError(f"a sandbox id looks like sb-..., got {sandbox_id!r}")
        return run_sync(_describe(sandbox_id))

    @staticmethod
    def from_name(app_name: str, name: str) -> Sandbox:
        """The running sandbox called ``name`` in the app ``app_name`` (a name or an id)."""
        return run_sync(_from_name(app_name, name))

    @staticmethod
    def list(*, app_id: str | None = None, tags: dict[str, str] | None = None) -> list[Sandbox]:
        """Running sandboxes, newest first, of one app and with all of ``tags``."""
        return run_sync(_list(app_id, tags))

    # -- processes
    @synchronized
    async def exec(
        self,
        *args: str,
        stdout: StreamType = StreamType.PIPE,
        stderr: StreamType = StreamType.PIPE,
        timeout: int | None = None,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
        secrets: Sequence[Any] | None = None,
        text: bool = True,
        pty: bool = False,
    ) -> ContainerProcess:
        """Start ``args`` in the sandbox; returns at once with the running process."""
        for what, mode in (("stdout", stdout), ("stderr", stderr)):
            if not isinstance(mode, StreamType):
                raise exc.InvalidError(f"{what} must be a vivace.sandbox.StreamType, got {mode!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise exc.InvalidError(f"timeout must be a positive number of seconds, got {timeout!r}")
        try:
            argv = proto.check_argv(list(args), "exec", allow_empty=False)
            proto.check_workdir(workdir)
            envs = proto.check_env(env)
        except proto.SandboxSpecError as err:
            raise exc.InvalidError(str(err)) from None
        body = {
            "argv": argv,
            "env": envs,
            "workdir": workdir,
            "timeout": timeout,
            "pty": params.flag("pty", pty),
        }
        if secrets:  # values are looked up by the control plane and go only to the sandbox's worker
            from vivace.app import resolve_storage

            if not self._info.get("app_id"):
                await self._describe(0)
            body["secrets"], _ = await resolve_storage(
                self._info["app_id"], params.secrets(list(secrets)), {}
            )
        if StreamType.DEVNULL in (stdout, stderr):
            body["discard"] = [
                n for n, m in (("stdout", stdout), ("stderr", stderr)) if m is StreamType.DEVNULL
            ]
        reply = await _post(f"/v1/sandboxes/{self.object_id}/exec", body, timeout=200, retry_for=0)
        return ContainerProcess(
            self.object_id, reply["process_id"], params.flag("text", text), stdout, stderr
        )

    # -- lifecycle
    async def _describe(self, wait: float) -> dict[str, Any]:
        info: dict[str, Any] = await _post(
            f"/v1/sandboxes/{self.object_id}/wait?wait={wait:g}", timeout=wait + 40, retry_for=60
        )
        self._absorb(info)
        return info

    @synchronized
    async def wait(self, raise_on_termination: bool = True) -> None:
        """Block until the sandbox's main process has exited (or the sandbox ended)."""
        info = self._info
        while info.get("state") != "finished":
            info = await self._describe(WAIT_STEP)
        if raise_on_termination:
            if info.get("result") == "terminated":
                raise exc.SandboxTerminatedError(
                    f"sandbox {self.object_id} was terminated: {info.get('reason')}"
                )
            if info.get("result") == "timeout":
                raise exc.SandboxTimeoutError(f"sandbox {self.object_id}: {info.get('reason')}")

    @synchronized
    async def poll(self) -> int | None:
        """The exit code if the sandbox has finished, else None (does not block)."""
        if self.returncode is None:
            await self._describe(0)
        return self.returncode

    @synchronized
    async def terminate(self, *, wait: bool = False) -> int | None:
        """Stop the sandbox (SIGTERM, then SIGKILL after 5 s); with ``wait``, until it has stopped."""
        await _post(f"/v1/sandboxes/{self.object_id}/terminate", retry_for=60)
        if wait:
            while self._info.get("state") != "finished":
                await self._describe(WAIT_STEP)
        return self.returncode

    @synchronized
    async def wait_until_ready(self, *, timeout: float = 300) -> None:
        """Block until the sandbox's readiness probe passes (raises ``TimeoutError`` after ``timeout``)."""
        probe = self._probe
        if probe is None:
            raise exc.InvalidError("this sandbox was created without a readiness_probe")
        deadline = time.monotonic() + float(params._number("timeout", timeout, 0.001, 86400))
        argv = ["python3", "-c", _TCP_PROBE, probe.argv[0]] if probe.kind == "tcp" else probe.argv
        while True:
            proc = await self.exec.aio(
                *argv, stdout=StreamType.DEVNULL, stderr=StreamType.DEVNULL, timeout=10
            )
            if await proc.wait.aio() == 0:
                return
            if time.monotonic() + probe.interval_ms / 1000 > deadline:
                raise exc.TimeoutError(
                    f"sandbox {self.object_id} was not ready within {timeout:g} s ({probe!r})"
                )
            await asyncio.sleep(probe.interval_ms / 1000)

    # -- tags
    @synchronized
    async def set_tags(self, tags: dict[str, str]) -> None:
        try:
            tags = proto.check_tags(tags)
        except proto.SandboxSpecError as err:
            raise exc.InvalidError(str(err)) from None
        api = await get_client()
        await api.request("PUT", f"/v1/sandboxes/{self.object_id}/tags", json_body={"tags": tags})
        self._info["tags"] = tags

    @synchronized
    async def get_tags(self) -> dict[str, str]:
        info = await self._describe(0)
        return dict(info.get("tags") or {})

    @synchronized
    async def tunnels(self, timeout: int = 50) -> dict[int, Tunnel]:
        """Port -> ``Tunnel`` for the ports given at create (``encrypted_ports``, ``unencrypted_ports``):
        an HTTP URL through the control plane that reaches the port inside the sandbox, and for
        ``unencrypted_ports`` a raw TCP address on the control plane too (``Tunnel.tcp_socket``). Anyone
        with the URL or the address can use it (it is the credential)."""
        api = await get_client()
        found = (await api.get_json(f"/v1/sandboxes/{self.object_id}/tunnels"))["tunnels"]
        return {
            int(p): Tunnel(
                int(p), t["url"], (t["tcp"]["host"], int(t["tcp"]["port"])) if t.get("tcp") else None
            )
            for p, t in found.items()
        }

    @synchronized
    async def snapshot_filesystem(self, timeout: int = 55) -> Any:
        """The sandbox's files now, as an ``Image`` that new sandboxes and functions start from: the
        image it was created with plus one layer of what it changed (needs ``image=`` at create)."""
        from vivace.image import Image

        wait = float(params._number("timeout", timeout, 1, 3600))
        reply = await _post(f"/v1/sandboxes/{self.object_id}/snapshot", timeout=wait + 30, retry_for=0)
        return Image.from_id(reply["image_id"])


async def _app_id(app: Any, app_cls: Any, lookup: Any) -> str:
    if app is None:
        from vivace.runtime import context

        if context.app_id:
            return context.app_id  # inside a container: its own app
        raise exc.InvalidError(
            "Sandbox.create needs app= outside a container, e.g. "
            "app=vivace.App.lookup('my-sandboxes', create_if_missing=True)"
        )
    if not isinstance(app, app_cls):
        raise exc.InvalidError(f"app must be a vivace.App, got {type(app).__name__}")
    if app.app_id is None:
        if not app.name:
            raise exc.InvalidError(
                "the app is not running: create sandboxes inside 'with app.run():', or use App.lookup(name)"
            )
        found = await lookup(app.name, True)
        app.app_id = found.app_id
    return str(app.app_id)


async def _describe(sandbox_id: str) -> Sandbox:
    api = await get_client()
    return Sandbox(sandbox_id, await api.get_json(f"/v1/sandboxes/{sandbox_id}"))


async def _from_name(app_name: str, name: str) -> Sandbox:
    if not isinstance(app_name, str) or not app_name or not isinstance(name, str) or not name:
        raise exc.InvalidError("Sandbox.from_name takes an app name and a sandbox name")
    api = await get_client()
    info = await api.get_json("/v1/sandboxes/lookup", params={"app": app_name, "name": name})
    return Sandbox(info["sandbox_id"], info)


async def _list(app_id: str | None, tags: dict[str, str] | None) -> list[Sandbox]:
    try:
        tags = proto.check_tags(tags)
    except proto.SandboxSpecError as err:
        raise exc.InvalidError(str(err)) from None
    api = await get_client()
    query: dict[str, Any] = {"tags": json.dumps(tags)}
    if app_id:
        query["app_id"] = app_id
    rows = (await api.get_json("/v1/sandboxes", params=query))["sandboxes"]
    return [Sandbox(r["sandbox_id"], r) for r in rows]
