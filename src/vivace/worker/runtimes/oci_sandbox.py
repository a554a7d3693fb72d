"""What sandboxes need of the OCI runtimes besides a start: processes exec'd with pipes or a terminal,
TCP connections inside the container's network namespace, its writable layer as an image layer, and
knowing when the runtime has created it. Mixed into :class:`OciRuntime` (``oci.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vivace.worker import idmap
from vivace.worker.cgroups import ContainerCgroup

if TYPE_CHECKING:
    from vivace.worker.runtimes.oci import OciHandle

log = logging.getLogger("vivace.worker")
CLONE_NEWNET = 0x40000000
# a warm sandbox's main process until it is taken: says it is ready, reads one line (unbuffered: what
# follows on stdin is the sandbox's own) naming the command, its environment and directory, and execs it
# (or, for a sandbox with no command, idles itself)
_STUB = """
import json, os, sys
sys.stdout.write(%r + "\\n"); sys.stdout.flush()
line = b""
while not line.endswith(b"\\n"):
    c = os.read(0, 1)
    if not c:
        sys.exit(0)
    line += c
m = json.loads(line)
if m.get("idle"):  # no command: this process idles as the sandbox's PID 1 (no second interpreter start)
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()
env = dict(os.environ); env.update(m["env"])
if m["cwd"]:
    os.chdir(m["cwd"])
try:
    os.execvpe(m["argv"][0], m["argv"], env)
except OSError as e:
    sys.stderr.write("%%s: %%s\\n" %% (m["argv"][0], e.strerror)); sys.exit(127)
"""


def sandbox_stub(spec: Any) -> list[str]:
    """The argv of a warm sandbox's main process (the image's Python, isolated from the environment)."""
    from vivace.runtime.main import WARM_READY
    from vivace.worker.runtimes.oci import python_of

    return [python_of(spec), "-I", "-S", "-c", _STUB % WARM_READY]


_libc = ctypes.CDLL(None, use_errno=True)


class SandboxOps:
    """The OCI runtime's sandbox operations; ``self`` is an ``OciRuntime``."""

    async def _claim_sandbox(self, warm: Any, spec: Any) -> OciHandle:
        """Hand a warm sandbox its settings: limits, outbound allowlist, then its command (exec'd by the
        stub, which keeps PID 1, stdin and the streams); exec'd processes inherit its environment."""
        from vivace.worker.cgroups import Limits
        from vivace.worker.runtimes.oci import _process_args

        handle = warm.handle
        try:
            limits = Limits(spec.cpu, spec.cpu_limit, spec.memory, spec.memory_limit, self.ctx.pids_limit)
            await asyncio.to_thread(handle.cgroup.create, limits)
            pool = self.ctx.network
            if spec.cidr_allowlist is not None and handle.slot is not None and pool is not None:
                await asyncio.to_thread(pool.restrict, handle.slot, spec.cidr_allowlist)
            env = {k: v for k, v in spec.env.items() if not k.startswith("VIVACE_")}
            env.update(VIVACE_TASK_ID=spec.container_id, MODAL_TASK_ID=spec.container_id)
            argv = _process_args(spec)
            cwd = spec.cwd or handle.process.get("cwd")
            idle = not spec.command
            line = json.dumps({"argv": argv, "env": env, "cwd": spec.cwd, "idle": idle}).encode() + b"\n"
            assert warm.proc.stdin is not None
            warm.proc.stdin.write(line)
            await warm.proc.stdin.drain()
        except BaseException:
            handle.kill()
            await handle.wait()
            raise
        merged = dict(item.split("=", 1) for item in handle.process.get("env", []))
        merged.update(env)
        handle.process = {
            **handle.process,
            "args": argv,
            "cwd": cwd,
            "env": [f"{k}={v}" for k, v in merged.items()],
        }
        handle.created = True
        log.info("container %s: started from warm %s sandbox %s", spec.container_id, self.name, handle.cid)
        self._oci_names[spec.container_id] = handle.cid
        handle.on_exit = lambda: self._oci_names.pop(spec.container_id, None)
        return handle  # type: ignore[no-any-return]

    name: str
    binary: str
    global_args: list[str]
    userns: bool
    ctx: Any
    _oci_names: dict[str, str]
    _preexec: Any
    _run_tool: Any

    async def spawn_tty(
        self, handle: OciHandle, argv: list[str], *, env: dict[str, str], cwd: str | None
    ) -> tuple[asyncio.subprocess.Process, Path, int]:
        """:meth:`spawn` on a pseudo-terminal the runtime makes inside the container: also returns the
        terminal's master end, which the runtime hands over on a console socket (``SCM_RIGHTS``). runsc
        (Debian's build) wants its own stdio to be the terminal instead: it gets a pty's slave end."""
        if self.name == "runsc":
            master, slave = os.openpty()
            try:
                proc, pid_file = await self.spawn(
                    handle, argv, env={"TERM": "xterm-256color", **env}, cwd=cwd, terminal_fd=slave
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            return proc, pid_file, master
        console = handle.bundle / f"console-{handle._execs + 1}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(console))
            listener.listen(1)
            listener.setblocking(False)
            proc, pid_file = await self.spawn(
                handle, argv, env={"TERM": "xterm-256color", **env}, cwd=cwd, console=console
            )
            loop = asyncio.get_running_loop()
            accept = asyncio.ensure_future(loop.sock_accept(listener))
            exited = asyncio.ensure_future(proc.wait())
            try:
                await asyncio.wait({accept, exited}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
                if not accept.done():
                    why = b""
                    if exited.done() and proc.stderr is not None:
                        why = await proc.stderr.read(4096)
                    raise RuntimeError(
                        f"{self.name} exec gave no terminal: {why.decode(errors='replace').strip() or 'timed out'}"
                    )
                conn, _ = accept.result()
                with conn:
                    conn.setblocking(True)
                    _msg, fds, _flags, _addr = await asyncio.to_thread(socket.recv_fds, conn, 4096, 1)
            except BaseException:
                accept.cancel()
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise
            finally:
                exited.cancel()
            if not fds:
                proc.kill()
                raise RuntimeError(f"{self.name} sent no terminal on its console socket")
            return proc, pid_file, fds[0]
        finally:
            listener.close()
            console.unlink(missing_ok=True)

    async def spawn(
        self,
        handle: OciHandle,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str | None,
        console: Path | None = None,
        terminal_fd: int | None = None,
    ) -> tuple[asyncio.subprocess.Process, Path]:
        """Start ``argv`` in the running container with pipes for its stdio, as the container's user, with
        its environment plus ``env``, its capabilities (none), its seccomp profile and no new privileges.
        Returns the runtime's exec process (whose exit status is the command's) and the file that will
        hold the command's pid (for :meth:`kill_exec`)."""
        handle._execs += 1
        process = dict(handle.process)
        merged = dict(item.split("=", 1) for item in process.get("env", []))
        merged.update(env)
        tty = console is not None or terminal_fd is not None
        process.update(args=argv, env=[f"{k}={v}" for k, v in merged.items()], terminal=tty)
        if tty:
            process["consoleSize"] = {"height": 24, "width": 80}
        if cwd:
            process["cwd"] = cwd
        path = handle.bundle / f"exec-{handle._execs}.json"
        pid_file = handle.bundle / f"exec-{handle._execs}.pid"
        path.write_text(json.dumps(process))
        pid_flag = "--internal-pid-file" if self.name == "runsc" else "--pid-file"
        proc = await asyncio.create_subprocess_exec(
            self.binary, *self.global_args, "exec", "--process", str(path), pid_flag, str(pid_file),
            *(["--console-socket", str(console)] if console is not None else []), handle.cid,
            stdin=asyncio.subprocess.PIPE if terminal_fd is None else terminal_fd,
            stdout=asyncio.subprocess.PIPE if terminal_fd is None else terminal_fd,
            stderr=asyncio.subprocess.PIPE if terminal_fd is None else terminal_fd,
            preexec_fn=functools.partial(self._preexec, self._control_netns(handle)),
        )  # fmt: skip
        return proc, pid_file

    async def connect(self, handle: OciHandle, port: int) -> socket.socket:
        """A TCP connection to ``port`` on the container's loopback, made inside its network namespace."""
        slot = handle.slot
        if slot is None:
            raise RuntimeError("tunnels need the worker's network namespaces (ip and iptables, as root)")
        if self.name == "runsc" and slot.blocked:
            raise RuntimeError("a runsc sandbox with block_network=True has gVisor's own network: no tunnels")
        return await asyncio.to_thread(connect_in_netns, slot.path, port)

    def snapshot(self, handle: OciHandle, out: Any) -> str:
        """Write the container's writable layer to ``out`` as an image layer; its sha256 (blocking)."""
        from vivace.worker import layers

        cdir = handle.bundle.parent
        upper = cdir / "disk" / "upper" if (cdir / "disk" / "upper").is_dir() else cdir / "upper"
        shift = idmap.HOST_BASE if self.userns else 0
        return layers.pack_layer(upper, out, layers.fastest_compression(), uid_shift=shift)

    async def wait_created(self, handle: OciHandle, timeout: float = 60.0) -> None:
        """Return once the runtime has created the container (``exec`` needs its state), or it exited."""
        deadline = asyncio.get_running_loop().time() + timeout
        delay = 0.002
        while handle.proc.returncode is None:
            code, out = await self._run_tool("state", handle.cid, netns=self._control_netns(handle))
            if code == 0:
                with contextlib.suppress(ValueError):
                    if json.loads(out).get("status") in ("created", "running"):
                        return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{self.name} did not create container {handle.cid} within {timeout:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _control_netns(self, handle: OciHandle) -> str | None:
        """runsc's control socket lives in the network namespace its sandbox started in."""
        if self.name == "runsc" and handle.slot is not None and not handle.slot.blocked:
            return handle.slot.path
        return None

    async def kill_exec(self, handle: OciHandle, pid_file: Path) -> None:
        """SIGKILL an exec'd command (its pid from ``pid_file``: the host's for crun and runc, the
        sandbox's own for runsc)."""
        try:
            pid = int(await asyncio.to_thread(pid_file.read_text))
        except (OSError, ValueError):
            return
        if self.name == "runsc":
            await self._run_tool(
                "kill", "--pid", str(pid), handle.cid, "KILL", netns=self._control_netns(handle)
            )
            return
        if str(pid) in self_cgroup_pids(handle.cgroup):  # never a reused pid outside the container
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def connect_in_netns(netns: str, port: int, timeout: float = 10.0) -> socket.socket:
    """Connect to 127.0.0.1:``port`` in the network namespace ``netns``. A thread of its own enters the
    namespace (setns changes only the calling thread's) and ends after; the socket keeps its namespace."""
    result: dict[str, Any] = {}

    def enter_and_connect() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({netns}) failed")
            finally:
                os.close(fd)
            sock = socket.create_connection(("127.0.0.1", port), timeout)
            sock.setblocking(False)
            result["sock"] = sock
        except BaseException as err:
            result["error"] = err

    thread = threading.Thread(target=enter_and_connect, name="vivace-netns-connect")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["sock"]  # type: ignore[no-any-return]


def self_cgroup_pids(cgroup: ContainerCgroup) -> set[str]:
    """Every pid in the container's cgroups (any hierarchy)."""
    pids: set[str] = set()
    for d in cgroup.dirs():
        for f in d.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(f.read_text().split())
    return pids
