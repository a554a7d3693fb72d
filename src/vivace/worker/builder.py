"""The worker's image builder: take a build from the control plane, make the missing layers, store them.

For each step of the image, in order: a layer some worker stored already is fetched from the blob store
and unpacked into this worker's layer cache; a missing one is built (``build.py``: debootstrap for the
base, a container over the layers so far for the others), packed (``layers.py``), uploaded by digest
and recorded, and its directory moves into the cache as it is. Log lines go to the control plane in
batches. Any failure ends the build as failed with the failing step and its log tail; nothing
half-built enters the cache or the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vivace import exception as exc
from vivace.protocol import images as proto

if TYPE_CHECKING:
    from vivace.client import ApiClient
    from vivace.worker.layer_cache import LayerCache

log = logging.getLogger("vivace.worker")
LOG_FLUSH = 0.5  # seconds between log batches
MIN_HIDDEN = 4  # characters a build secret's value needs to be masked in build logs
TAKE_WAIT = 25.0
STEP_TIMEOUT = 3600.0  # seconds one build step may run


def can_build() -> str | None:
    """None when this worker can build images, else why not."""
    if os.geteuid() != 0:
        return "building images needs root"
    for tool in ("crun", "debootstrap"):
        if shutil.which(tool) is None:
            return f"building images needs {tool}"
    return None


class BuildLog:
    """Collects a build's lines and sends them in batches; keeps the tail for error messages."""

    def __init__(self, api: ApiClient, image_id: str, worker_id: str, hidden: Iterable[str] = ()) -> None:
        self.api, self.image_id, self.worker_id = api, image_id, worker_id
        # the build secrets' values: a command that prints one shows *** in the log (short values, which
        # would mask ordinary text, are not searched for)
        self.hidden = sorted({v for v in hidden if len(v) >= MIN_HIDDEN}, key=len, reverse=True)
        self.pending: list[str] = []
        self.tail: list[str] = []
        self.loop = asyncio.get_running_loop()

    def __call__(self, line: str) -> None:  # called from build threads too
        try:
            here = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            here = False
        line = self.redact(line.rstrip("\n"))
        if here:  # at once: a flush right after must see it
            self._add(line)
        else:
            self.loop.call_soon_threadsafe(self._add, line)

    def redact(self, text: str) -> str:
        for value in self.hidden:
            text = text.replace(value, "***")
        return text

    def _add(self, line: str) -> None:
        self.pending.append(line)
        self.tail = [*self.tail[-49:], line]

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        await self.api.post_json(
            f"/v1/images/{self.image_id}/logs", {"worker_id": self.worker_id, "lines": batch}, retry_for=30
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH)
            with contextlib.suppress(exc.Error):
                await self.flush()


class ImageBuilder:
    def __init__(
        self,
        api: ApiClient,
        images_dir: Path,
        key: str,
        runtime: str = "crun",
        cache: LayerCache | None = None,
    ) -> None:
        self.api = api
        self.cache = cache
        self.layers = images_dir / "layers"
        self.pulls = images_dir / "pulls"  # registry layers as pulled, before a step squashes them
        self.scratch = images_dir / "build"
        self.uv_cache = images_dir / "uv-cache"
        self.key = key  # the worker's: build containers' cgroups and namespaces carry it
        self.runtime = runtime
        self.worker_id = ""

    async def run(self) -> None:
        """Take builds until cancelled."""
        why = can_build()
        if why is not None:
            log.info("this worker builds no images: %s", why)
            return
        from vivace.worker import build

        self.layers.mkdir(parents=True, exist_ok=True)
        self.uv_cache.mkdir(parents=True, exist_ok=True)
        for what in await asyncio.to_thread(build.reconcile_builds, self.key):
            log.info("removed what an interrupted build left: %s", what)
        shutil.rmtree(self.scratch, ignore_errors=True)  # what a crash left mid-build
        self.scratch.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                info = await self.api.post_json(
                    "/v1/workers/builds",
                    {"worker_id": self.worker_id, "wait": TAKE_WAIT},
                    timeout=TAKE_WAIT + 30,
                )
            except exc.Error as err:
                log.warning("could not ask for image builds: %s", err)
                await asyncio.sleep(2)
                continue
            if info:
                await self.build(info)

    async def build(self, info: dict[str, Any]) -> None:
        image_id = info["image_id"]
        secret_env: dict[str, dict[str, str]] = info.get("secret_env") or {}
        hidden = [v for env in secret_env.values() for v in env.values()]
        blog = BuildLog(self.api, image_id, self.worker_id, hidden)
        flusher = asyncio.create_task(blog.run())
        started = time.monotonic()
        error: str | None = None
        try:
            await self._build_layers(info, blog, secret_env)
        except Exception as err:  # the build failed: say where, keep the tail
            error = str(err) if isinstance(err, exc.ImageBuildError) else f"{type(err).__name__}: {err}"
            error = blog.redact(error)
            log.warning("image %s failed to build: %s", image_id, error)
        finally:
            flusher.cancel()
        with contextlib.suppress(exc.Error):
            await blog.flush()
        if error is None:
            blog(f"built in {time.monotonic() - started:.1f} s")
            await blog.flush()
        await self.api.post_json(
            f"/v1/images/{image_id}/finish", {"worker_id": self.worker_id, "error": error}, retry_for=60
        )

    async def _build_layers(
        self, info: dict[str, Any], blog: BuildLog, secret_env: dict[str, dict[str, str]]
    ) -> None:
        lowers: list[Path] = []  # top first, as overlayfs wants them
        config = ImageConfig()
        pinned = [self.layers / layer["key"] for layer in info["layers"]]
        if self.cache is not None:  # the build stacks them: no collection while it runs
            self.cache.pin(pinned)
        try:
            await self._build_steps(info, blog, lowers, config, secret_env)
        finally:
            if self.cache is not None:
                self.cache.unpin(pinned)

    async def _build_steps(
        self,
        info: dict[str, Any],
        blog: BuildLog,
        lowers: list[Path],
        config: ImageConfig,
        secret_env: dict[str, dict[str, str]],
    ) -> None:
        for i, (step, layer) in enumerate(zip(info["steps"], info["layers"], strict=True)):
            label = f"step {i + 1}/{len(info['steps'])} {step['kind']}"
            layer_config = layer.get("config")
            if layer["digest"]:
                blog(f"{label}: cached")
                path = await self.fetch_layer(layer["key"], layer["digest"])
            else:
                blog(f"{label}: building")
                t0 = time.monotonic()
                path, layer_config = await self._build_layer(
                    step, layer["key"], lowers, config, blog, label, secret_env.get(str(i)) or {}
                )
                blog(f"{label}: done in {time.monotonic() - t0:.1f} s")
            lowers.insert(0, path)
            config.apply(step, layer_config)

    async def _build_layer(
        self,
        step: dict[str, Any],
        key: str,
        lowers: list[Path],
        config: ImageConfig,
        blog: BuildLog,
        label: str,
        secret_env: dict[str, str],
    ) -> tuple[Path, dict[str, Any] | None]:
        """Build one layer, store it, move it into the cache: its directory and what it sets besides
        files (a registry image's config, the interpreter a base provides). ``secret_env``: the step's
        build secrets, its commands' environment for this build only (never the image's config)."""
        from vivace.worker import build, layers, step_commands

        work = Path(tempfile.mkdtemp(prefix="layer-", dir=self.scratch))
        upper = work / "upper"
        upper.mkdir()
        layer_config: dict[str, Any] | None = None
        try:
            kind = step["kind"]
            if kind == "debian_slim":
                shutil.rmtree(upper)
                base = await asyncio.to_thread(debian_base, step["python_version"], blog)
                blog(f"{label}: debootstrapped tree {base}")
                await asyncio.to_thread(_link_tree, base, upper)
            elif kind in ("add_files", "snapshot"):  # a snapshot's layer is its blob (re-packed here)
                archive = await self._download(step["digest"], work / "files.tar.gz")
                await asyncio.to_thread(layers.unpack_layer, archive, upper)
            elif kind in proto.METADATA_KINDS or kind == "force_build":
                pass  # an empty layer: the step changes the image's config, not its files
            elif kind == "from_registry":
                layer_config = await self._from_registry(step["reference"], upper, blog, label, secret_env)
            else:
                binds: list[tuple[str, Path]] = []
                if kind == "run_function":
                    from vivace.worker import images

                    payload = await self._download(step["digest"], work / "function.pkl")
                    bundle = await asyncio.to_thread(images.runtime_bundle, self.layers.parent)
                    binds = [
                        (step_commands.FUNCTION_IN_CONTAINER, payload),
                        (step_commands.RUNTIME_IN_BUILD, bundle),
                    ]
                commands = step_commands.commands_for(step)
                user = await asyncio.to_thread(resolve_user, config.user, lowers)
                await asyncio.to_thread(
                    build.run_step,
                    list(lowers),
                    upper,
                    commands,
                    env={**config.build_env(), **secret_env},
                    workdir=config.workdir,
                    log=blog,
                    runtime=self.runtime,
                    step=step,
                    key=self.key,
                    uv_cache=self.uv_cache,
                    timeout=STEP_TIMEOUT,
                    binds=binds,
                    user=user,
                )
                if kind == "add_python":
                    layer_config = {"python": "/usr/local/bin/python3"}
            packed = work / "layer.tar"
            with packed.open("wb") as out:
                digest = await asyncio.to_thread(layers.pack_layer, upper, out, layers.fastest_compression())
            size = packed.stat().st_size
            blog(f"{label}: layer {digest[:12]} ({size / 1e6:.1f} MB)")
            await self.api.put_file(f"/v1/blobs/{digest}", packed)  # streamed: layers run to gigabytes
            await self.api.post_json(
                f"/v1/images/{blog.image_id}/layers",
                {
                    "worker_id": self.worker_id,
                    "key": key,
                    "digest": digest,
                    "size": size,
                    "config": layer_config,
                },
                retry_for=30,
            )
            return _into_cache(upper, self.layers, key), layer_config
        except exc.ImageBuildError as err:
            hint = (
                "\n(add_python downloads CPython from python-build-standalone's releases: the worker needs "
                "to reach them, or UV_PYTHON_INSTALL_MIRROR set to a mirror)"
                if step["kind"] == "add_python"
                else ""
            )
            raise exc.ImageBuildError(f"{label}: {err}{hint}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def _from_registry(
        self, reference: str, upper: Path, blog: BuildLog, label: str, secret_env: dict[str, str]
    ) -> dict[str, Any]:
        """Pull ``reference`` and squash its layers into ``upper``: one layer of this image, which other
        workers fetch from the blob store without asking the registry. Returns the image's config.
        Credentials: the step's secret (``from_registry(secret=)``), else the worker's own."""
        from vivace.worker import registry

        if secret_env:
            auth: tuple[str, str] | None = (secret_env["REGISTRY_USERNAME"], secret_env["REGISTRY_PASSWORD"])
            with_auth = " with the credentials of its secret"
        else:
            source = registry.credentials_file()
            auth = registry.credentials_for(registry.parse_reference(reference).registry, source)
            with_auth = f" with the worker's credentials from {source}" if auth else ""
        blog(f"{label}: pulling {reference} ({registry.host_platform()}){with_auth}")
        pulled = await registry.pull_async(
            reference, self.pulls, auth=auth, platform=registry.host_platform()
        )
        blog(
            f"{label}: {pulled.reference}@{pulled.manifest_digest[:19]}: {len(pulled.layers)} layer(s), "
            f"{len(pulled.downloaded)} downloaded"
        )
        if self.cache is not None:
            self.cache.pin(pulled.layer_dirs)
        try:
            await asyncio.to_thread(squash, list(pulled.layer_dirs), upper)
        finally:
            if self.cache is not None:
                self.cache.unpin(pulled.layer_dirs)
        c = pulled.config
        env = dict(item.split("=", 1) for item in c.env if "=" in item)
        config: dict[str, Any] = {"env": env, "workdir": c.working_dir or "/", "user": c.user}
        if c.entrypoint is not None:
            config["entrypoint"] = list(c.entrypoint)
        if c.cmd is not None:
            config["cmd"] = list(c.cmd)
        python = find_python(upper)
        if python is not None:
            config["python"] = python
        else:
            blog(f"{label}: {reference} has no python3 in /usr/local/bin or /usr/bin (add_python= adds one)")
        return config

    async def fetch_layer(self, key: str, digest: str) -> Path:
        """The cached layer directory for ``key``, downloading and unpacking it if this worker lacks it."""
        from vivace.worker import layers

        dest = self.layers / key
        if dest.is_dir():
            return dest
        self.scratch.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="fetch-", dir=self.scratch))
        try:
            blob = await self._download(digest, work / "layer")
            return await asyncio.to_thread(layers.unpack_layer_atomic, blob, self.layers, key)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def _download(self, digest: str, dest: Path) -> Path:
        """The blob ``digest`` streamed into the file ``dest``, checked against its address."""
        await self.api.download(f"/v1/blobs/{digest}", dest)

        def sha256() -> str:
            with dest.open("rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()

        if await asyncio.to_thread(sha256) != digest:
            raise exc.ImageBuildError(f"blob {digest} arrived corrupted")
        return dest


class ImageConfig:
    """What metadata steps set: environment, working directory, entrypoint and command."""

    def __init__(self) -> None:
        self.env: dict[str, str] = {}
        self.workdir = "/"
        self.entrypoint: list[str] | None = None
        self.cmd: list[str] | None = None
        self.user = ""
        self.python: str | None = None  # None: no layer said (a debian_slim base: /usr/bin/python3)

    def apply(self, step: dict[str, Any], layer: dict[str, Any] | None = None) -> None:
        """Apply what a step sets, after what its layer recorded when it was built (a pulled image's
        env, workdir, entrypoint, cmd and user; the interpreter its base provides)."""
        if layer:
            self.env.update(layer.get("env") or {})
            self.workdir = layer.get("workdir") or self.workdir
            self.entrypoint = layer.get("entrypoint", self.entrypoint)
            self.cmd = layer.get("cmd", self.cmd)
            self.user = layer.get("user", self.user)
            self.python = layer.get("python", self.python)
        kind = step["kind"]
        if kind == "env":
            self.env.update(step["vars"])
        elif kind == "workdir":
            self.workdir = step["path"]
        elif kind == "entrypoint":
            self.entrypoint = list(step["argv"])
        elif kind == "cmd":
            self.cmd = list(step["argv"])
        elif kind == "user":
            self.user = step["name"]

    def build_env(self) -> dict[str, str]:
        return dict(self.env)


def base_cache() -> Path:
    """Where debootstrapped Debian trees are kept, shared by the machine's workers (a Debian mirror
    fetch is the slowest step there is; the tree is never modified once made)."""
    return Path(os.environ.get("VIVACE_BASE_CACHE", "/var/cache/vivace/bases"))


def debian_base(python_version: str, log: Callable[[str], None]) -> Path:
    """The debootstrapped tree for ``python_version``, made once per machine (under a file lock)."""
    import fcntl

    from vivace.worker import build

    cache = base_cache()
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / f"debian-slim-{python_version}-r{build.BASE_RECIPE}"
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dest.is_dir():
            build.build_debian_slim(python_version, dest, log)
    return dest


def _link_tree(src: Path, dest: Path) -> None:
    """A copy of ``src`` at ``dest`` made of hard links (instant; neither side is modified later)."""
    import subprocess

    proc = subprocess.run(["cp", "-a", "--link", str(src), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise exc.ImageBuildError(f"could not copy the base tree: {proc.stderr.strip()}")


def _into_cache(upper: Path, cache: Path, key: str) -> Path:
    dest = cache / key
    if dest.exists():  # another build of the same layer got there first
        return dest
    try:
        upper.rename(dest)
    except OSError:
        if not dest.is_dir():  # not a lost race: the layer cannot enter the cache
            raise
    return dest


PYTHONS = ("/usr/local/bin/python3", "/usr/bin/python3")  # where images keep it, in order of preference


def find_python(root: Path) -> str | None:
    """The first of :data:`PYTHONS` that exists in the tree ``root`` (symlinks followed inside it)."""
    for candidate in PYTHONS:
        if _exists_in(root, candidate):
            return candidate
    return None


def _exists_in(root: Path, path: str, hops: int = 16) -> bool:
    """Whether ``path`` names a regular file in ``root``, resolving symlinks as the container would."""
    parts = [p for p in path.split("/") if p]
    current: list[str] = []
    while parts and hops > 0:
        name = parts.pop(0)
        if name == "..":
            current = current[:-1]
            continue
        candidate = root.joinpath(*current, name)
        if candidate.is_symlink():
            hops -= 1
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = []
            continue
        current.append(name)
    return hops > 0 and root.joinpath(*current).is_file() and not root.joinpath(*current).is_symlink()


def squash(layer_dirs: list[Path], dest: Path) -> None:
    """Copy the merged view of ``layer_dirs`` (unpacked OCI layers, base first, their whiteouts as
    overlayfs keeps them) into the empty directory ``dest``: overlayfs resolves whiteouts and opaque
    directories, ``cp -a`` keeps owners, modes, times, hard links and xattrs. The mount lives in a
    private mount namespace of its own process, so nothing stays mounted if the worker dies."""
    import subprocess

    if not layer_dirs:
        raise exc.ImageBuildError("the image has no layers")
    with tempfile.TemporaryDirectory(prefix="squash-", dir=dest.parent) as tmp:
        empty, merged = Path(tmp, "empty"), Path(tmp, "merged")
        empty.mkdir()
        merged.mkdir()
        lowers = [*reversed(layer_dirs), empty] if len(layer_dirs) == 1 else list(reversed(layer_dirs))
        base = layer_dirs[0].parent  # relative names keep the mount options short (a page at most)
        names = [os.path.relpath(p, base) for p in lowers]
        script = 'mount -t overlay overlay -o "ro,lowerdir=$1" "$2" && cp -a "$2"/. "$3"/'
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "squash",
             ":".join(names), str(merged), str(dest)],
            cwd=base, capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            raise exc.ImageBuildError(f"could not merge the image's layers: {proc.stderr.strip()[-2000:]}")


def resolve_user(spec: str, layers: list[Path]) -> tuple[int, int, str] | None:
    """``USER`` (``name``, ``uid``, ``name:group``, ``uid:gid``) as (uid, gid, home) from the image's own
    ``/etc/passwd`` and ``/etc/group`` (the topmost layer that has each); None for root.

    Raises ImageBuildError for a name the image does not know."""
    if spec in ("", "root", "0", "0:0", "root:root"):
        return None
    name, _, group = spec.partition(":")
    passwd = _image_table(layers, "etc/passwd")
    entry = next((e for e in passwd if name in (e[0], e[2])), None)
    if entry is None and not name.isdigit():
        raise exc.ImageBuildError(f"USER {spec}: the image's /etc/passwd has no user {name!r}")
    uid = int(entry[2]) if entry else int(name)
    gid = int(entry[3]) if entry else uid
    home = entry[5] if entry and len(entry) > 5 and entry[5] else "/"
    if group:
        found = next((e for e in _image_table(layers, "etc/group") if group in (e[0], e[2])), None)
        if found is None and not group.isdigit():
            raise exc.ImageBuildError(f"USER {spec}: the image's /etc/group has no group {group!r}")
        gid = int(found[2]) if found else int(group)
    return uid, gid, home


def _image_table(layers: list[Path], rel: str) -> list[list[str]]:
    for layer in layers:  # top first: the first that has the file wins, as in the container
        path = layer / rel
        if path.is_file() and not path.is_symlink():
            rows = [line.split(":") for line in path.read_text(errors="replace").splitlines()]
            return [r for r in rows if len(r) >= 4 and r[2].isdigit()]
    return []
