"""Image builds on a worker: the ``debian_slim`` base layer, and build steps in isolated containers.

* :func:`build_debian_slim` makes the base layer: ``debootstrap --variant=minbase`` of the Debian suite
  that ships the requested Python, then made to behave like the ``python:X-slim`` images (``python`` and
  ``pip`` on PATH, no "externally managed" refusal, no apt lists or downloaded packages).
* :func:`run_step` runs one step's shell commands in a crun (or runc) container whose root filesystem
  is an overlay of the image's layers so far (read-only, top first) over ``upper``. Afterwards ``upper``
  holds exactly what the step changed, overlay whiteouts (character devices 0/0) for deletions and
  ``trusted.overlay.opaque`` directories for replaced ones: it is the step's layer.
* :func:`commands_for` turns a step (``apt_install``, ``pip_install``, ``uv_pip_install``,
  ``run_commands``) into those commands, every package spec validated and shell-quoted.

**The build container** is a function container (``oci.oci_config``: its own pid, ipc, uts, mount,
cgroup and network namespaces, no path of the host, the seccomp deny-list, masked ``/proc`` paths,
``noNewPrivileges``, a worker-owned cgroup with limits) that runs package managers as root, so it keeps
the capabilities they use and nothing else: CHOWN, DAC_OVERRIDE, FOWNER and FSETID (dpkg sets owners
and modes of what it unpacks), SETUID and SETGID (apt drops to its ``_apt`` user to download), KILL
(signals to those), SETFCAP (packages that ship file capabilities) and SYS_CHROOT (maintainer scripts).
No SYS_ADMIN, NET_ADMIN, NET_RAW, MKNOD or SYS_PTRACE. Where idmapped mounts work (``idmap.probe``) that
root is also the root of a user namespace (host uid ``idmap.HOST_BASE``), so its capabilities reach
nothing outside its own namespaces; the lowers, the upper and the uv cache are mounted idmapped, so what
it writes lands on disk owned by uid 0 (and ``_apt``'s files by 42), as in any image. Elsewhere it is
host root with only those capabilities, as Docker runs builds.

**Build-only context, never in a layer.** ``/run`` is a tmpfs in a build container; ``/run/vivace-build``
in it holds a copy of the CA bundle the worker's ``SSL_CERT_FILE`` (or ``PIP_CERT``,
``REQUESTS_CA_BUNDLE``) names, the worker's ``uv`` (both read-only), the uv cache shared by the worker's
builds, and ``TMPDIR`` (a directory beside ``upper`` on the worker's disk). ``SSL_CERT_FILE``,
``PIP_CERT``, ``REQUESTS_CA_BUNDLE``, ``UV_SYSTEM_CERTS`` (``UV_NATIVE_TLS`` before uv 0.11) and the
worker's proxy variables are set for the step only. Mount points the runtime had to create in the
image (one without ``/etc/resolv.conf``) are removed from ``upper`` afterwards.

**Network:** an open slot (veth, NAT, no route to the host's own services nor to other containers, see
``network.py``): the worker passes one from its pool, or the step makes a one-off one (~150 ms).
:func:`reconcile_builds` removes what a worker that died mid-step left (mounts, cgroups, namespaces).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from vivace.exception import ImageBuildError
from vivace.protocol import images as protocol
from vivace.worker import idmap, images
from vivace.worker.cgroups import ContainerCgroup, Limits, detect, leftovers
from vivace.worker.network import NetworkPool, host_resolv_conf, one_off_slot
from vivace.worker.runtimes.base import ContainerSpec, RuntimeContext
from vivace.worker.runtimes.oci import (
    SOCKET_DIR,
    OciRuntime,
    mount_overlay,
    mounted_under,
    oci_config,
    unmount,
)
from vivace.worker.step_commands import BUILD_DIR, UV_IN_CONTAINER, commands_for

__all__ = [
    "BASE_RECIPE",
    "BUILD_CAPABILITIES",
    "BUILD_LIMITS",
    "BuildStepError",
    "ImageBuildError",
    "build_debian_slim",
    "commands_for",
    "debian_suite",
    "find_uv",
    "reconcile_builds",
    "run_step",
]

Log = Callable[[str], None]

BASE_RECIPE = "1"  # bump when build_debian_slim makes a different tree (callers key their caches on it)
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# let an operator point uv's Python downloads at a mirror (these machines cannot reach GitHub)
PYTHON_DOWNLOAD_VARS = ("UV_PYTHON_INSTALL_MIRROR", "UV_PYTHON_DOWNLOADS_JSON_URL")
CA_IN_CONTAINER = BUILD_DIR + "/ca.pem"
UV_CACHE_IN_CONTAINER = BUILD_DIR + "/uv-cache"
TMP_IN_CONTAINER = BUILD_DIR + "/tmp"
BUILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
    "CAP_SETFCAP", "CAP_SYS_CHROOT",
)  # fmt: skip
BUILD_LIMITS = Limits(cpu=1.0, cpu_limit=None, memory=512, memory_limit=8192, pids=4096)
CA_VARS = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
              "ALL_PROXY")  # fmt: skip
# no directory renames recorded as redirects, no metadata-only copy-ups: the upper directory must be a
# plain tree of files to pack; "volatile": dpkg's fsyncs cost nothing (a crashed build is discarded)
OVERLAY_OPTIONS = "redirect_dir=off,metacopy=off,index=off,volatile"
TAIL_LINES = 50

OPAQUE = "trusted.overlay.opaque"
MOUNTER_ON_DISK = idmap.SIZE  # what overlayfs's own files (work directory, whiteouts) are owned by on disk
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class BuildStepError(ImageBuildError):
    """A command of a build step failed (or timed out): ``exit_code`` is None after a timeout."""

    def __init__(
        self, step: Mapping[str, Any] | None, command: str, code: int | None, tail: list[str], why: str
    ):
        self.step, self.command, self.exit_code, self.log_tail = step, command, code, tail
        what = f"{step['kind']} step" if step else "build step"
        log = "\nlast lines of its log:\n" + "\n".join(tail) if tail else ""
        super().__init__(f"{what} failed: `{command}` {why}{log}")


# -- the base layer ------------------------------------------------------------------------------


def debian_suite(python_version: str) -> str:
    """The Debian suite whose ``python3`` is ``python_version``."""
    suite = protocol.SUPPORTED_PYTHONS.get(python_version)
    if suite is None:
        known = ", ".join(f"{v} ({s})" for v, s in sorted(protocol.SUPPORTED_PYTHONS.items()))
        raise ImageBuildError(
            f"debian_slim has Python {known}, the versions Debian ships; not {python_version!r}"
        )
    return suite


def build_debian_slim(
    python_version: str, dest: Path, log: Log, *, mirror: str = DEBIAN_MIRROR, timeout: float = 1800
) -> None:
    """Bootstrap the ``debian_slim`` base layer at ``dest`` (which must not exist).

    Built in a temporary directory next to ``dest`` and renamed into place: a crash leaves nothing
    half-built under ``dest``'s name. debootstrap runs in a private mount namespace, so the ``/proc``
    and ``/sys`` it mounts in the target vanish with it whatever happens. Its output goes to ``log``."""
    suite = debian_suite(python_version)
    debootstrap = _tool("debootstrap", "the debootstrap package")
    if not Path("/usr/share/debootstrap/scripts", suite).exists():
        raise ImageBuildError(
            f"this host's debootstrap cannot bootstrap {suite}: upgrade the debootstrap package"
        )
    if dest.exists():
        raise ImageBuildError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    started = time.monotonic()
    tail = _Tail(log)
    try:
        argv = [debootstrap, "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES), "--components=main",
                suite, str(tmp), mirror]  # fmt: skip
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/root",
               "DEBIAN_FRONTEND": "noninteractive", **_pick(os.environ, PROXY_VARS)}  # fmt: skip
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_private_mount_namespace,
        )  # fmt: skip
        code = _stream(proc, tail.append, timeout, lambda: _killpg(proc))
        if code != 0:
            detail = _last_lines(tmp / "debootstrap" / "debootstrap.log", 20)
            why = "timed out" if code is None else f"failed (exit code {code})"
            raise ImageBuildError(f"debootstrap of {suite} {why}:\n" + "\n".join([*tail, *detail]))
        _make_slim(tmp, suite, mirror)
        tmp.chmod(0o755)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing is mounted there: debootstrap's namespace is gone
        raise
    log(f"debian_slim {python_version} ({suite}) built in {time.monotonic() - started:.1f} s")


def _make_slim(root: Path, suite: str, mirror: str) -> None:
    """What makes a bootstrapped Debian behave like ``python:X-slim``, and nothing of the host in it."""
    local_bin = root / "usr/local/bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    for name, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
        (local_bin / name).unlink(missing_ok=True)
        (local_bin / name).symlink_to(target)
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists").mkdir(mode=0o755)
    for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/dpkg/*-old",
                    "var/cache/debconf/*-old", "var/log/bootstrap.log"):  # fmt: skip
        for path in root.glob(pattern):
            path.unlink()
    # debootstrap copies the host's resolv.conf and hostname; build and function containers bind their own
    for name, text in (("resolv.conf", ""), ("hostname", "localhost\n")):
        (root / "etc" / name).unlink(missing_ok=True)
        (root / "etc" / name).write_text(text)
        (root / "etc" / name).chmod(0o644)
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    (root / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {suite} {suite}-updates\nComponents: main\nSigned-By: {keyring}\n\n"
        f"Types: deb\nURIs: {SECURITY_MIRROR}\nSuites: {suite}-security\nComponents: main\nSigned-By: {keyring}\n"
    )
    # Debian byte-compiles its Python modules when it installs them (py3compile): check, never assume
    for lib in (*root.glob("usr/lib/python3.*"), root / "usr/lib/python3/dist-packages"):
        if lib.is_dir() and not any(lib.rglob("__pycache__/*.pyc")):
            raise ImageBuildError(f"debian_slim: {lib.relative_to(root)} has no compiled bytecode")


# -- build steps ---------------------------------------------------------------------------------


def find_uv(env: Mapping[str, str] | None = None) -> Path | None:
    """The worker's ``uv`` executable: ``$VIVACE_UV``, ``$UV`` (``uv run`` sets it), PATH, ``~/.local/bin``
    or ``~/.cargo/bin``. Launcher scripts (pyenv's shims) are skipped: a build container runs the binary."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    for candidate in (env.get("VIVACE_UV"), env.get("UV"), shutil.which("uv", path=env.get("PATH")),
                      home / ".local/bin/uv", home / ".cargo/bin/uv"):  # fmt: skip
        if not candidate:
            continue
        path = Path(os.path.realpath(candidate))
        with contextlib.suppress(OSError), path.open("rb") as f:
            if f.read(4) == b"\x7fELF" and os.access(path, os.X_OK):
                return path
    return None


def run_step(
    lowers: list[Path],
    upper: Path,
    commands: list[str],
    *,
    env: dict[str, str],
    workdir: str,
    log: Log,
    network: bool = True,
    runtime: str = "crun",
    step: Mapping[str, Any] | None = None,
    netns: str | None = None,
    key: str = "build",
    limits: Limits = BUILD_LIMITS,
    uv_cache: Path | None = None,
    host_env: Mapping[str, str] | None = None,
    userns: bool | None = None,
    timeout: float | None = None,
    binds: list[tuple[str, Path]] = (),  # type: ignore[assignment]
    user: tuple[int, int, str] | None = None,
) -> None:
    """Run ``commands`` (each ``/bin/sh -c``, in order, stopping at the first failure) in a build
    container over ``lowers`` (read-only, top first) with ``upper`` (empty or missing) as its writable
    layer, the image's ``env`` and working directory ``workdir``. Output lines go to ``log``.

    ``netns``: an open network namespace from the worker's pool; with ``network`` and none given the step
    makes a one-off one. ``key``: the worker's key (names the cgroup ``vivace/<key>/build-*`` and the
    runtime's state, which the worker's reconciliation cleans). ``uv_cache``: a directory shared by
    builds; without one uv caches nothing. ``host_env``: where the proxy and CA settings come from (the
    worker's environment by default). ``userns``: None picks a user namespace where idmapped mounts work.
    ``step``: the step being built, for the error. Raises :class:`BuildStepError` when a command fails;
    the caller discards ``upper``. Nothing of the container stays behind, on success or failure."""
    if runtime not in ("crun", "runc"):
        raise ImageBuildError(f"image builds run on crun or runc, not {runtime}")
    if not lowers:
        raise ImageBuildError("a build step needs the image's layers so far")
    binary = _tool(runtime, f"the {runtime} package")
    host_env = os.environ if host_env is None else host_env
    uv = find_uv(host_env)
    if uv is None and any(UV_IN_CONTAINER in c for c in commands):
        raise ImageBuildError("pip_install needs uv on the worker (set VIVACE_UV or put uv on PATH)")
    upper.mkdir(parents=True, exist_ok=True)
    if any(upper.iterdir()):
        raise ImageBuildError(f"the upper directory {upper} is not empty")
    top = lowers[0].stat()  # the merged root directory takes the upper's mode and owner
    os.chown(upper, top.st_uid, top.st_gid)
    upper.chmod(stat.S_IMODE(top.st_mode))
    rt = OciRuntime(runtime, binary, RuntimeContext(Path("/run/vivace") / key, key))
    use_userns = _userns_works() if userns is None else userns
    tail = _Tail(log)
    with _BuildContainer(rt, key, use_userns) as box:
        box.mount(lowers, upper, uv_cache)
        box.configure(env, workdir, limits, network, netns, uv, host_env, list(binds), user)
        for command in commands:
            tail.append(f"$ {command}")
            code = box.run(command, tail.append, timeout)
            if code is None:
                raise BuildStepError(step, command, None, [*tail], f"did not finish within {timeout:g} s")
            if code != 0:
                oom = code == 137 and box.cgroup is not None and box.cgroup.oom_killed(True)
                why = f"ran out of memory (the build's limit is {limits.memory_limit} MiB)" if oom else ""
                raise BuildStepError(step, command, code, [*tail], why or f"exited with code {code}")


def reconcile_builds(key: str) -> list[str]:
    """Remove what build steps of worker ``key`` left when it died mid-step: their processes, cgroups and
    runtime state, their mounts (unmounted, never deleted through: they show layers and the uv cache),
    scratch directories and one-off network namespaces. For a worker's start and stop, when none of its
    builds runs. Returns what it removed."""
    removed = []
    host = detect()
    for name in leftovers(host, f"vivace/{key}"):
        if name.startswith("build-"):
            ContainerCgroup(host, f"vivace/{key}/{name}").remove()
            removed.append(f"cgroup {name}")
    run = Path("/run/vivace") / key
    for state in run.glob("*/build-*-*"):  # crun's and runc's state of the step's containers
        shutil.rmtree(state, ignore_errors=True)
        removed.append(f"runtime state {state.name}")
    for scratch in run.glob("build-*"):
        with contextlib.suppress(OSError):
            NetworkPool((scratch / "net-key").read_text()).teardown()
            removed.append(f"network of {scratch.name}")
        for m in mounted_under(scratch):
            unmount(m)
            removed.append(f"mount {m}")
        _remove_scratch(scratch)
        removed.append(f"scratch {scratch.name}")
    return removed


class _BuildContainer:
    """The mounts, cgroup, network and bundle of one build step; ``close`` (on exit) removes them all,
    each part whatever happened to the others."""

    def __init__(self, rt: OciRuntime, key: str, userns: bool) -> None:
        self.rt, self.key, self.userns = rt, key, userns
        self.id = uuid.uuid4().hex[:12]
        self.scratch = Path("/run/vivace") / key / f"build-{self.id}"  # reachable by a mapped root
        self.cgroup: ContainerCgroup | None = None
        self.config: dict[str, Any] = {}
        self.stubs: list[str] = []
        self.upper: Path | None = None
        self.tmp: Path | None = None
        self._stack = contextlib.ExitStack()
        self._runs = 0

    def __enter__(self) -> _BuildContainer:
        self.scratch.mkdir(parents=True)
        self._stack.callback(_remove_scratch, self.scratch)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _bind(self, source: Path, target: Path, ns: int | None) -> Path:
        """``source`` at ``target`` (idmapped when ``ns``, the user namespace, is given); unmounted on close."""
        target.mkdir(parents=True, exist_ok=True)
        if ns is not None:
            idmap.mount_idmapped(source, target, ns)
        elif _libc.mount(str(source).encode(), str(target).encode(), None, MS_BIND | MS_REC, None) != 0:
            raise OSError(ctypes.get_errno(), f"cannot bind {source}: {os.strerror(ctypes.get_errno())}")
        self._stack.callback(unmount, target)
        return target

    def mount(self, lowers: list[Path], upper: Path, uv_cache: Path | None) -> None:
        ns = rw_ns = None
        if self.userns:
            ns = idmap.userns_fd()
            # overlayfs makes its work files as the mounter (host root): the upper's mapping gives that
            # uid an id of its own on disk, or overlayfs falls back to read-only (EOVERFLOW)
            rw_ns = _userns_fd(f"0 {idmap.HOST_BASE} {idmap.SIZE}\n{MOUNTER_ON_DISK} 0 1\n")
        try:
            # short paths (the overlay options fit in a page) and, in a user namespace, owned by its root
            layers = [self._bind(lower, self.scratch / f"l{i}", ns) for i, lower in enumerate(lowers)]
            work = upper.parent / f".{upper.name}.work-{self.id}"  # overlayfs wants it on upper's mount
            work.mkdir()
            self._stack.callback(shutil.rmtree, work, True)
            rw = self._bind(upper.parent, self.scratch / "rw", rw_ns)
            # temporary files of the step's tools (TMPDIR): on the worker's disk, never in the layer
            tmp = upper.parent / f".{upper.name}.tmp-{self.id}"
            tmp.mkdir()
            tmp.chmod(0o1777)
            self._stack.callback(shutil.rmtree, tmp, True)
            self.tmp = rw / tmp.name if self.userns else tmp
            if uv_cache is not None:
                uv_cache.mkdir(parents=True, exist_ok=True)
                self._bind(uv_cache, self.scratch / "uv-cache", ns)
        finally:
            for fd in (ns, rw_ns):
                if fd is not None:
                    os.close(fd)
        root = self.scratch / "root"
        root.mkdir()
        mount_overlay(layers, rw / upper.name, rw / work.name, root, OVERLAY_OPTIONS)
        self.upper = upper
        self._stack.callback(self._unmount_root, root)

    def _unmount_root(self, root: Path) -> None:
        unmount(root)
        assert self.upper is not None
        for stub in self.stubs:
            _remove_stub(self.upper, stub)
        if self.userns:
            _own_overlay_files(self.upper)

    def configure(
        self,
        env: Mapping[str, str],
        workdir: str,
        limits: Limits,
        network: bool,
        netns: str | None,
        uv: Path | None,
        host_env: Mapping[str, str],
        extra: list[tuple[str, Path]] = (),  # type: ignore[assignment]
        user: tuple[int, int, str] | None = None,
    ) -> None:
        self.cgroup = ContainerCgroup(self.rt.cgroups, f"vivace/{self.key}/build-{self.id}")
        self._stack.callback(self.cgroup.remove)
        self.cgroup.create(limits)
        resolv = None
        if network:
            if netns is None:
                net_key = "bx" + self.id[:4]
                (self.scratch / "net-key").write_text(net_key)  # for reconcile_builds after a crash
                netns = self._stack.enter_context(one_off_slot(net_key)).path
            resolv = self.scratch / "resolv.conf"
            resolv.write_text(host_resolv_conf())
        binds: list[tuple[str, Path, bool]] = []
        build_env = {"PATH": f"{BUILD_PATH}:{BUILD_DIR}/bin", "HOME": "/root", "LANG": "C.UTF-8", **env}
        build_env.update(_pick(host_env, PROXY_VARS + PYTHON_DOWNLOAD_VARS))
        ca = next((Path(host_env[v]) for v in CA_VARS if v in host_env and Path(host_env[v]).is_file()), None)
        if ca is not None:  # a copy: readable by the container's root whatever the original's mode
            shutil.copyfile(ca, self.scratch / "ca.pem")
            (self.scratch / "ca.pem").chmod(0o644)
            binds.append((CA_IN_CONTAINER, self.scratch / "ca.pem", True))
            build_env.update(dict.fromkeys(CA_VARS, CA_IN_CONTAINER))
            if uv is not None:
                build_env[_uv_tls_variable(uv)] = "1"
        if uv is not None:
            binds.append((UV_IN_CONTAINER, uv, True))
        build_env.update(UV_PYTHON_DOWNLOADS="never", UV_LINK_MODE="copy", PIP_NO_CACHE_DIR="1",
                         PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")  # fmt: skip
        assert self.tmp is not None
        binds.append((TMP_IN_CONTAINER, self.tmp, False))
        binds += [(target, source, True) for target, source in extra]  # read-only, build-only
        build_env["TMPDIR"] = TMP_IN_CONTAINER
        if (self.scratch / "uv-cache").is_dir():
            binds.append((UV_CACHE_IN_CONTAINER, self.scratch / "uv-cache", False))
            build_env["UV_CACHE_DIR"] = UV_CACHE_IN_CONTAINER
        else:
            build_env["UV_NO_CACHE"] = "1"
        spec = ContainerSpec(container_id=self.id, workdir=self.scratch, socket_path=self.scratch / "none",
                             source_dir=None)  # fmt: skip
        config = oci_config(
            spec, cgroups_path=self.cgroup.runtime_path, runtime_bundle=self.scratch, netns=netns,
            rlimit_nofile=_nofile_limit(), resolv_conf=resolv, hostname="vivace-build", userns=self.userns,
            root_path=str(self.scratch / "root"),
        )  # fmt: skip
        if user is not None:  # Dockerfile USER: the step runs as that user, with no capabilities
            build_env["HOME"] = user[2]
        self.config = _build_config(config, build_env, workdir, binds, user)
        self.stubs = _missing_mount_points(self.scratch / "root", self.config["mounts"])
        (self.scratch / "bundle").mkdir()

    def run(self, command: str, log: Log, timeout: float | None) -> int | None:
        """Run one command in a fresh container on the same root: its exit code, None on timeout."""
        assert self.cgroup is not None
        self._runs += 1
        name = f"build-{self.id}-{self._runs}"
        self.config["process"]["args"] = ["/bin/sh", "-c", command]
        (self.scratch / "bundle/config.json").write_text(json.dumps(self.config))
        self.rt.state_root.mkdir(parents=True, exist_ok=True)
        cgroup = self.cgroup
        try:
            proc = subprocess.Popen(
                [self.rt.binary, *self.rt.global_args, "run", "--bundle", str(self.scratch / "bundle"), name],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                preexec_fn=self.rt.preexec,
            )  # fmt: skip
            return _stream(proc, log, timeout, cgroup.kill_all)
        finally:
            cgroup.kill_all()  # whatever is left (an exception from log, a timeout)
            subprocess.run([self.rt.binary, *self.rt.global_args, "delete", "--force", name],
                           capture_output=True, preexec_fn=self.rt.preexec, check=False)  # fmt: skip


def _build_config(
    config: dict[str, Any],
    env: Mapping[str, str],
    workdir: str,
    binds: list[tuple[str, Path, bool]],
    user: tuple[int, int, str] | None = None,
) -> dict[str, Any]:
    """A function container's config made a build container's: no vivace socket or runtime, a tmpfs at
    ``/run`` (before anything that may be bound under it) with the build-only binds, the step's process."""
    mounts = [m for m in config["mounts"] if m["destination"] not in (SOCKET_DIR, images.RUNTIME_MOUNT)]
    at = next(i for i, m in enumerate(mounts) if m["destination"] == "/sys") + 1
    mounts.insert(at, {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=755", "size=65536k"]})  # fmt: skip
    for dest, source, ro in binds:
        mounts.append({"destination": dest, "type": "bind", "source": str(source),
                       "options": ["bind", "ro" if ro else "rw", "nosuid", "nodev"]})  # fmt: skip
    caps = {k: list(BUILD_CAPABILITIES) for k in ("bounding", "effective", "permitted")}
    env_list = [f"{k}={v}" for k, v in env.items()]
    process = {**config["process"], "env": env_list, "cwd": workdir, "capabilities": caps}
    if user is not None:
        process["user"] = {"uid": user[0], "gid": user[1]}
        process["capabilities"] = {
            k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
        }
    return {**config, "mounts": mounts, "process": process}


def _missing_mount_points(root: Path, mounts: list[dict[str, Any]]) -> list[str]:
    """The top-most path of each mount point the image lacks (the runtime creates them in the overlay),
    leaving out those inside an earlier mount."""
    missing: list[str] = []
    earlier: list[str] = []
    for m in mounts:
        dest = m["destination"]
        if not any(dest.startswith(e.rstrip("/") + "/") for e in earlier):
            parts = Path(dest).parts[1:]
            for i in range(len(parts)):
                sub = "/" + "/".join(parts[: i + 1])
                if not os.path.lexists(root / sub.lstrip("/")):
                    missing.append(sub)
                    break
        earlier.append(dest)
    return list(dict.fromkeys(missing))


# -- helpers ---------------------------------------------------------------------------------------


class _Tail(collections.deque[str]):
    """The last lines of a log, passing each on to ``log``."""

    def __init__(self, log: Log) -> None:
        super().__init__(maxlen=TAIL_LINES)
        self.log = log

    def append(self, line: str) -> None:
        super().append(line)
        self.log(line)


def _stream(
    proc: subprocess.Popen[bytes], log: Log, timeout: float | None, kill: Callable[[], None]
) -> int | None:
    """Send ``proc``'s output lines to ``log`` until it exits; its exit code, or None past ``timeout``."""
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        kill()

    timer = threading.Timer(timeout, expire) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        out: IO[bytes] | None = proc.stdout
        assert out is not None
        with out:
            for raw in iter(lambda: out.readline(65536), b""):
                log(raw.decode(errors="replace").rstrip())
        code = proc.wait()
    except BaseException:
        kill()
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    return None if timed_out.is_set() else code


def _remove_stub(upper: Path, stub: str) -> None:
    """Remove a mount point the runtime created in the image (an empty file or directory: not the step's
    doing) and the directories above it that overlayfs copied up only to hold it (empty, not opaque)."""
    path = upper / stub.lstrip("/")
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()  # only when empty
        elif path.is_file() and path.stat().st_size == 0:
            path.unlink()
        else:
            return
        for parent in path.parents:
            if parent == upper or any(parent.iterdir()) or OPAQUE in os.listxattr(parent):
                break
            parent.rmdir()


def _own_overlay_files(upper: Path) -> None:
    """What overlayfs made as the mounter (whiteouts) belongs to root, as in any image."""
    for dirpath, dirs, files in os.walk(upper):
        for name in (*dirs, *files):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if MOUNTER_ON_DISK in (st.st_uid, st.st_gid):
                uid = 0 if st.st_uid == MOUNTER_ON_DISK else -1
                os.lchown(path, uid, 0 if st.st_gid == MOUNTER_ON_DISK else -1)


@functools.cache
def _uv_tls_variable(uv: Path) -> str:
    """uv 0.11 renamed UV_NATIVE_TLS (now deprecated, with a warning on every run) to UV_SYSTEM_CERTS."""
    out = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    return "UV_SYSTEM_CERTS" if m and (int(m[1]), int(m[2])) >= (0, 11) else "UV_NATIVE_TLS"


def _remove_scratch(scratch: Path) -> None:
    """Remove a step's scratch directory without ever descending into a mount point: its directories are
    empty mount points (``rmdir`` refuses one still mounted) but for the bundle."""
    (scratch / "bundle/config.json").unlink(missing_ok=True)
    for entry in scratch.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            entry.rmdir()
        else:
            entry.unlink()
    scratch.rmdir()


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _private_mount_namespace() -> None:
    """Between fork and exec: the child dies with us, and what it mounts stays in its own namespace."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if _libc.unshare(CLONE_NEWNS) != 0 or _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "cannot make a private mount namespace")


def _userns_fd(id_map: str) -> int:
    """A file descriptor of a new user namespace whose uid and gid maps are ``id_map``."""
    holder = subprocess.Popen(["sleep", "60"], preexec_fn=_unshare_user, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        ours = os.stat("/proc/self/ns/user").st_ino
        for _ in range(100_000):  # the child unshares before exec
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{holder.pid}/ns/user").st_ino != ours:
                    break
            os.sched_yield()
        for kind in ("uid", "gid"):
            Path(f"/proc/{holder.pid}/{kind}_map").write_text(id_map)
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        holder.kill()
        holder.wait()


def _unshare_user() -> None:
    if _libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER) failed")


@functools.cache
def _userns_works() -> bool:
    return idmap.probe() is None


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None or os.geteuid() != 0:
        raise ImageBuildError(f"image builds need root and {name} on the worker (install {package})")
    return found


def _pick(env: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {k: env[k] for k in names if env.get(k)}


def _last_lines(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _nofile_limit() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(65536, hard if hard != resource.RLIM_INFINITY else 65536)
