"""The ``process`` runtime: the container is a plain child process. No isolation: development only."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys

from vivace.worker.runtimes.base import Capabilities, ContainerSpec, ExitStatus, wait_process

PR_SET_PDEATHSIG = 1


def _die_with_worker() -> None:
    # a container must not outlive its worker (kill -9 included); the worker reconciles the rest
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()


class ProcessHandle:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self._killed = False

    async def wait(self) -> ExitStatus:
        code, at = await wait_process(self.proc)
        if code == 0:
            return ExitStatus(0, "exited", exited_at=at)
        if code < 0:
            sig = -code
            reason = "killed" if self._killed or sig in (signal.SIGKILL, signal.SIGTERM) else "crashed"
            return ExitStatus(128 + sig, reason, exited_at=at)
        return ExitStatus(code, "crashed", exited_at=at)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._killed = True
        self._signal(signal.SIGKILL)


class ProcessRuntime:
    name = "process"
    capabilities = Capabilities(
        isolation=False,
        cpu_limit=False,
        memory_limit=False,
        pids_limit=False,
        network_isolation=False,
        gpu=True,
    )

    def prepare(self) -> None:
        pass

    def reconcile(self, keep: set[str]) -> list[str]:
        return []  # process containers die with their worker (PR_SET_PDEATHSIG)

    def _env(self, spec: ContainerSpec) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIVACE_", "MODAL_"))}
        env.update(spec.env)
        pypath = [str(spec.source_dir)] if spec.source_dir else []
        pypath.append(_vivace_root())
        env.update(
            {
                "VIVACE_SOCKET": str(spec.socket_path),
                "VIVACE_TASK_ID": spec.container_id,
                "MODAL_TASK_ID": spec.container_id,
                "PYTHONPATH": os.pathsep.join(pypath),
                "PYTHONUNBUFFERED": "1",
                "HOME": str(spec.workdir),
            }
        )
        if spec.gpus:  # no isolation here: the variable is all that narrows what CUDA sees
            env["CUDA_VISIBLE_DEVICES"] = ",".join(g.uuid for g in spec.gpus)
        return env

    async def start(self, spec: ContainerSpec) -> ProcessHandle:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vivace.runtime",
            cwd=str(spec.source_dir or spec.workdir),
            env=self._env(spec),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_worker,
        )
        return ProcessHandle(proc)

    async def exec(self, spec: ContainerSpec, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(spec.source_dir or spec.workdir),
            env=self._env(spec),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return 124, b"", f"timed out after {timeout:g} s\n".encode()
        return proc.returncode or 0, out, err


def _vivace_root() -> str:
    import vivace

    return os.path.dirname(os.path.dirname(os.path.abspath(vivace.__file__)))
