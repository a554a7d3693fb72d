"""Root filesystems for isolated containers, until the image builder lands.

Two read-only trees, each built once per worker into ``<workdir>/images`` (into a temporary directory,
then renamed, so a crash never leaves half a tree behind) and shared by every container:

* the **base**: the worker's own Python interpreter and standard library (bytecode included), the
  shared libraries they link, ``/bin/sh``, and a minimal ``/etc``. It holds nothing else of the host,
  and its Python is the client's minor version on a single machine, which cloudpickle needs.
* the **runtime bundle**: vivace's own code plus cloudpickle, bytecode compiled, mounted read-only at
  ``/opt/vivace/runtime``. It is never installed into the user's environment.

Containers see the base through overlayfs with a private writable layer (see ``oci.py``).
"""

from __future__ import annotations

import compileall
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

log = logging.getLogger("vivace.worker")

BUILDER_VERSION = "1"
RUNTIME_MOUNT = "/opt/vivace/runtime"
_SKIP_STDLIB = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "lib2to3"}
_EXTRA_LIBS = ("libgcc_s.so.1",)  # glibc dlopens it for thread cancellation
_ETC = {
    "passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    "group": "root:x:0:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
    "resolv.conf": "",
    "hostname": "vivace\n",
}
_lock = threading.Lock()


class ImageError(RuntimeError):
    pass


def interpreter() -> Path:
    """The real path of the interpreter containers run (the worker's base interpreter, not a venv)."""
    return Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))


def base_rootfs(images_dir: Path) -> Path:
    """The base root filesystem, built on first use."""
    exe = interpreter()
    st = exe.stat()
    key = f"{BUILDER_VERSION}|{exe}|{st.st_size}|{st.st_mtime_ns}|{sys.version}"
    dest = images_dir / f"base-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return _build_once(dest, lambda tmp: _build_base(tmp, exe))


def runtime_bundle(images_dir: Path) -> Path:
    """vivace's runtime code and its pure-Python dependencies, keyed by their content."""
    roots = [_package_dir("vivace"), _package_dir("cloudpickle")]
    h = hashlib.sha256(BUILDER_VERSION.encode())
    for root in roots:
        for p in sorted(root.rglob("*.py")):
            h.update(str(p.relative_to(root.parent)).encode())
            h.update(p.read_bytes())
    dest = images_dir / f"runtime-{h.hexdigest()[:16]}"
    return _build_once(dest, lambda tmp: _build_bundle(tmp, roots))


def _build_once(dest: Path, build: object) -> Path:
    if dest.exists():
        return dest
    with _lock:
        if dest.exists():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)  # type: ignore[operator]
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("built %s", dest.name)
    return dest


def _package_dir(name: str) -> Path:
    mod = __import__(name)
    return Path(mod.__file__ or "").resolve().parent


def _build_bundle(dest: Path, roots: list[Path]) -> None:
    for root in roots:
        shutil.copytree(
            root, dest / root.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "py.typed")
        )
    if not compileall.compile_dir(
        str(dest), quiet=1, workers=1, stripdir=str(dest), prependdir=RUNTIME_MOUNT
    ):
        raise ImageError("could not compile vivace's runtime bundle")
    _make_readonly(dest)


def _build_base(dest: Path, exe: Path) -> None:
    rootfs = dest / "rootfs"
    for d in (
        "bin",
        "etc",
        "tmp",
        "root",
        "proc",
        "dev",
        "sys",
        "run",
        "src",
        "usr/local/bin",
        RUNTIME_MOUNT[1:],
    ):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "root").chmod(0o700)
    for name, text in _ETC.items():
        (rootfs / "etc" / name).write_text(text)

    _copy_file(exe, rootfs)
    stdlib, platstdlib = _stdlib_dirs()
    for lib in {stdlib, platstdlib}:
        _copy_tree(lib, rootfs / lib.relative_to("/"))
    sh = Path(os.path.realpath("/bin/sh"))
    _copy_file(sh, rootfs)
    if sh != Path("/bin/sh"):
        (rootfs / "bin" / "sh").symlink_to(sh)
    objects = [exe, sh, *platstdlib.joinpath("lib-dynload").glob("*.so")]
    for lib in _shared_libraries(objects):
        _copy_file(lib, rootfs, keep_name=True)
    for name in ("python3", "python", f"python{sys.version_info[0]}.{sys.version_info[1]}"):
        link = rootfs / "usr/local/bin" / name
        if not link.exists():
            link.symlink_to(exe)
    # standard library bytecode: the shell may set PYTHONDONTWRITEBYTECODE, and a cold start without .pyc
    # pays for compiling every module it imports
    for lib in {stdlib, platstdlib}:
        compileall.compile_dir(
            str(rootfs / lib.relative_to("/")), quiet=1, workers=1, stripdir=str(rootfs), prependdir="/"
        )
    # files are hardlinked from the host where possible: never chmod them; overlayfs keeps them read-only


def _stdlib_dirs() -> tuple[Path, Path]:
    """The base interpreter's standard library (a virtual environment points platstdlib at itself)."""
    base = {k: sys.base_prefix for k in ("base", "platbase", "installed_base", "installed_platbase")}
    paths = sysconfig.get_paths(vars=base)
    return Path(paths["stdlib"]).resolve(), Path(paths["platstdlib"]).resolve()


def _shared_libraries(objects: list[Path]) -> set[Path]:
    libs: set[Path] = set()
    for i in range(0, len(objects), 64):
        out = subprocess.run(
            ["ldd", *map(str, objects[i : i + 64])], capture_output=True, text=True, check=False
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                libs.add(Path(parts[2]))
            elif parts and parts[0].startswith("/") and "ld-linux" in parts[0]:
                libs.add(Path(parts[0]))
    for lib in list(libs):
        for extra in _EXTRA_LIBS:
            candidate = lib.parent / extra
            if candidate.exists():
                libs.add(candidate)
    return libs


def _copy_file(src: Path, rootfs: Path, keep_name: bool = False) -> None:
    """Copy ``src`` to the same path under ``rootfs`` (dereferenced); hardlink where possible."""
    target = rootfs / str(src).lstrip("/")
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    real = Path(os.path.realpath(src))
    try:
        os.link(real, target)
    except OSError:
        shutil.copy2(real, target)
    if keep_name and real != src:
        alias = rootfs / str(real).lstrip("/")
        if not alias.exists():
            alias.parent.mkdir(parents=True, exist_ok=True)
            os.link(target, alias)


def _copy_tree(src: Path, dest: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n.endswith((".opt-1.pyc", ".opt-2.pyc"))}
        if Path(folder) == src:
            skip |= _SKIP_STDLIB & set(names)
        return skip

    shutil.copytree(src, dest, symlinks=True, ignore=ignore, dirs_exist_ok=True, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _make_readonly(root: Path) -> None:
    """Strip write bits of a tree we copied (never of hardlinked host files)."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with contextlib.suppress(OSError):
                if not os.path.islink(p):
                    st = os.stat(p)
                    os.chmod(p, st.st_mode & ~0o222)
