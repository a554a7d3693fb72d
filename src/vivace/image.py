"""``Image``: Modal's image builder, as an immutable chain of steps (see docs/adr/0010-images.md).

Every method validates its arguments at once (an ``InvalidError`` naming the argument) and returns a new
``Image``. Steps that read local files remember the path; the files are archived and hashed when the
image is resolved (``Image.steps()``), so the id changes exactly when their content does.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import json
import os
import secrets
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vivace import exception as exc
from vivace._sync import synchronized
from vivace.protocol import images as proto

MAX_LOCAL_FILES = 512 * 1024 * 1024  # bytes of local files one step may add
SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


@dataclass(frozen=True)
class _LocalFiles:
    """An ``add_local_*`` step before its files are archived: (local path, path inside the image)."""

    entries: tuple[tuple[str, str], ...]
    remote: str
    copy: bool


@dataclass(frozen=True)
class FileArchive:
    digest: str
    data: bytes


@dataclass(frozen=True)
class _Function:
    """A ``run_function`` step (canonical JSON) with the pickle it names, uploaded with the build."""

    step: str
    archive: FileArchive


class Image:
    """A container image: a base (``debian_slim``, ``from_registry``) and the steps applied to it."""

    def __init__(self, steps: tuple[Any, ...], *, _id: str | None = None) -> None:
        self._steps = steps
        self._fixed_id = _id
        self._archives: dict[str, FileArchive] = {}
        self._archived: dict[_LocalFiles, FileArchive] = {}  # each step's files are read once

    def __repr__(self) -> str:
        kinds = [
            s.get("kind")
            if isinstance(s, dict)
            else "run_function"
            if isinstance(s, _Function)
            else "add_local"
            for s in self._steps
        ]
        return f"<vivace.Image {' -> '.join(str(k) for k in kinds)}>"

    # -- constructors -----------------------------------------------------------------------------
    @staticmethod
    def debian_slim(python_version: str | None = None, force_build: bool = False) -> Image:
        """Debian with Python (``python`` and ``pip`` on PATH), like the ``python:X-slim`` images.

        ``python_version`` defaults to this interpreter's minor version (containers must run the
        client's minor for cloudpickle). Debian ships 3.11 (bookworm) and 3.13 (trixie); any other
        3.x is a uv-managed CPython added to bookworm (``add_python``), which needs the worker to reach
        python-build-standalone's downloads (or a mirror: ``UV_PYTHON_INSTALL_MIRROR``).
        """
        version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        if not isinstance(version, str):
            raise exc.InvalidError(f"python_version must be a string such as '3.11', got {version!r}")
        version = ".".join(version.split(".")[:2])
        if version in proto.SUPPORTED_PYTHONS:
            return Image(({"kind": "debian_slim", "python_version": version},))._forced(force_build, first=0)
        if not proto.PYTHON_VERSION.fullmatch(version) or not 9 <= int(version.split(".")[1]) <= 14:
            hint = "" if python_version else f" (this interpreter is {version}; pass python_version=)"
            raise exc.InvalidError(
                f"debian_slim takes a Python version from 3.9 to 3.14, got {version!r}{hint}"
            )
        steps = (
            {"kind": "debian_slim", "python_version": "3.11"},
            {"kind": "add_python", "python_version": version},
        )
        return Image(steps)._forced(force_build, first=0)

    @staticmethod
    def from_registry(
        tag: str,
        *,
        secret: Any = None,
        add_python: str | None = None,
        force_build: bool = False,
        **kwargs: Any,
    ) -> Image:
        """An image pulled from an OCI registry (Docker Hub, GHCR, a private registry, ...).

        The image needs ``python3`` on ``/usr/local/bin`` or ``/usr/bin`` to run functions; for one
        without, ``add_python="3.12"`` installs a standalone CPython (uv-managed) into it. The tag is
        resolved when the image is first built: later builds reuse that layer until ``force_build``.
        """
        _no_extra(kwargs, "Image.from_registry()")
        if not isinstance(tag, str):
            raise exc.InvalidError(f"from_registry takes an image reference string, got {tag!r}")
        auth = _build_secrets([secret], None) if secret is not None else []
        from vivace.worker.registry import InvalidReferenceError, parse_reference

        try:
            parse_reference(tag)
        except InvalidReferenceError as err:
            raise exc.InvalidError(str(err)) from None
        base: dict[str, Any] = {"kind": "from_registry", "reference": tag}
        if auth:  # its REGISTRY_USERNAME and REGISTRY_PASSWORD: the worker pulls with them
            base["auth_secret"] = auth[0]
        steps: list[dict[str, Any]] = [_checked(base)]
        if add_python is not None:
            steps.append(_checked({"kind": "add_python", "python_version": add_python}))
        return Image(tuple(steps))._forced(force_build, first=0)

    @staticmethod
    def from_dockerfile(
        path: str | Path,
        context_dir: str | Path | None = None,
        *,
        build_args: dict[str, str] | None = None,
        add_python: str | None = None,
        force_build: bool = False,
        secrets: Sequence[Any] = (),
        gpu: Any = None,
        **kwargs: Any,
    ) -> Image:
        """An image from a Dockerfile: its FROM pulled from a registry, then one step per instruction.

        FROM/ARG/ENV/RUN/WORKDIR/COPY/ADD (local files)/ENTRYPOINT/CMD are supported (one stage);
        ``context_dir`` (default: the current directory, as Modal) is where COPY sources are found.
        Anything else is refused with the line that uses it (``vivace._sdk.dockerfile``).
        """
        _no_extra(kwargs, "Image.from_dockerfile()")
        names = _build_secrets(secrets, gpu)
        if _in_container():  # built from the client's files; there are none here
            return Image(())
        file = Path(path).expanduser()
        try:
            text = file.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise exc.InvalidError(f"cannot read the Dockerfile {path}: {err}") from None
        return Image(())._dockerfile(
            text, context_dir if context_dir is not None else Path.cwd(), build_args, str(path), add_python,
            require_from=True, secret_names=names,
        )._forced(force_build, first=0)  # fmt: skip

    @staticmethod
    def from_id(image_id: str) -> Image:
        """The image with this id (built before, anywhere)."""
        if not isinstance(image_id, str) or not image_id.startswith(proto.IMAGE + "-"):
            raise exc.InvalidError(f"not an image id: {image_id!r}")
        return Image((), _id=image_id)

    # -- steps ------------------------------------------------------------------------------------
    def apt_install(
        self,
        *packages: str | list[str],
        force_build: bool = False,
        secrets: Sequence[Any] = (),
        gpu: Any = None,
        **kwargs: Any,
    ) -> Image:
        """Install Debian packages with apt (``secrets``, named: its environment)."""
        _no_extra(kwargs, "apt_install()")
        step = {"kind": "apt_install", "packages": _flatten(packages, "apt_install")}
        return self._add(_with_secrets(step, _build_secrets(secrets, gpu)), force_build)

    def pip_install(
        self,
        *packages: str | list[str],
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        secrets: Sequence[Any] = (),
        gpu: Any = None,
        **kwargs: Any,
    ) -> Image:
        """Install Python packages (with uv, bytecode compiled); ``secrets`` (named): its environment,
        e.g. ``UV_INDEX_URL`` or credentials for a private index."""
        _no_extra(kwargs, "pip_install()")
        return self._pip(
            "pip_install", packages, find_links, index_url, extra_index_url, pre, extra_options, force_build
        )._secrets_on_last(_build_secrets(secrets, gpu))

    def uv_pip_install(
        self,
        *packages: str | list[str],
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        secrets: Sequence[Any] = (),
        gpu: Any = None,
        **kwargs: Any,
    ) -> Image:
        """Install Python packages with uv (bytecode compiled); ``secrets`` as in :meth:`pip_install`."""
        _no_extra(kwargs, "uv_pip_install()")
        names = _build_secrets(secrets, gpu)
        return self._pip(
            "uv_pip_install",
            packages,
            find_links,
            index_url,
            extra_index_url,
            pre,
            extra_options,
            force_build,
        )._secrets_on_last(names)

    def pip_install_from_requirements(
        self, requirements_txt: str, force_build: bool = False, **kwargs: Any
    ) -> Image:
        """Install what a local requirements file lists (its lines become the step, so edits rebuild)."""
        if _in_container():  # the image was built from the client's files; there are none here
            return self
        path = Path(requirements_txt).expanduser()
        if not path.is_file():
            raise exc.InvalidError(f"requirements file {requirements_txt!r} does not exist")
        lines = [
            line.split("#", 1)[0].strip()
            for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip() and not line.strip().startswith("-")
        ]
        if not lines:
            raise exc.InvalidError(f"{requirements_txt} lists no requirements")
        return self.pip_install(*lines, force_build=force_build, **kwargs)

    def pip_install_from_pyproject(
        self, pyproject_toml: str, optional_dependencies: Sequence[str] = (), force_build: bool = False
    ) -> Image:
        """Install a local pyproject.toml's dependencies (and the named optional groups)."""
        if _in_container():  # the image was built from the client's files; there are none here
            return self
        import tomllib

        path = Path(pyproject_toml).expanduser()
        if not path.is_file():
            raise exc.InvalidError(f"{pyproject_toml!r} does not exist")
        try:
            project = tomllib.loads(path.read_text()).get("project", {})
        except tomllib.TOMLDecodeError as err:
            raise exc.InvalidError(f"{pyproject_toml} is not valid TOML: {err}") from None
        deps = list(project.get("dependencies", []))
        extras = project.get("optional-dependencies", {})
        for group in optional_dependencies:
            if group not in extras:
                raise exc.InvalidError(f"{pyproject_toml} has no optional dependency group {group!r}")
            deps += extras[group]
        if not deps:
            raise exc.InvalidError(f"{pyproject_toml} lists no dependencies")
        return self.pip_install(*deps, force_build=force_build)

    def run_commands(
        self,
        *commands: str | list[str],
        secrets: Sequence[Any] = (),
        force_build: bool = False,
        gpu: Any = None,
    ) -> Image:
        """Run shell commands in the image (network on); ``secrets`` (named) are their environment."""
        step = {"kind": "run_commands", "commands": _flatten(commands, "run_commands")}
        return self._add(_with_secrets(step, _build_secrets(secrets, gpu)), force_build)

    def env(self, vars: dict[str, str]) -> Image:
        """Set environment variables for later steps and for containers."""
        if not isinstance(vars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in vars.items()
        ):
            raise exc.InvalidError("env() takes a dict of str to str")
        return self._add({"kind": "env", "vars": dict(vars)}, False)

    def workdir(self, path: str | os.PathLike[str]) -> Image:
        """Set the working directory for later steps and for containers."""
        return self._add({"kind": "workdir", "path": str(path)}, False)

    def entrypoint(self, entrypoint_commands: list[str]) -> Image:
        return self._add({"kind": "entrypoint", "argv": list(entrypoint_commands)}, False)

    def cmd(self, cmd: list[str]) -> Image:
        return self._add({"kind": "cmd", "argv": list(cmd)}, False)

    def add_local_file(self, local_path: str | Path, remote_path: str, *, copy: bool = False) -> Image:
        """Add one local file at ``remote_path`` (a directory if it ends with '/')."""
        if _in_container():  # the image was built from the client's files; there are none here
            return self
        src = Path(local_path).expanduser()
        if not src.is_file():
            raise exc.InvalidError(f"add_local_file: {local_path} is not a file")
        remote = remote_path + src.name if remote_path.endswith("/") else remote_path
        _check_remote(remote)
        return self._local(((str(src.resolve()), remote),), "/", copy)

    def add_local_dir(
        self, local_path: str | Path, remote_path: str, *, copy: bool = False, ignore: Sequence[str] = ()
    ) -> Image:
        """Add a local directory's files under ``remote_path``."""
        if _in_container():  # the image was built from the client's files; there are none here
            return self
        src = Path(local_path).expanduser()
        if not src.is_dir():
            raise exc.InvalidError(f"add_local_dir: {local_path} is not a directory")
        _check_remote(remote_path)
        entries = tuple(
            (str(p), str(Path(remote_path) / p.relative_to(src))) for p in _walk(src.resolve(), tuple(ignore))
        )
        return self._local(entries, "/", copy)

    def add_local_python_source(self, *modules: str, copy: bool = False, ignore: Sequence[str] = ()) -> Image:
        """Add local Python modules or packages (by import name) to the image's import path."""
        if _in_container():  # the image was built from the client's files; there are none here
            return self
        entries: list[tuple[str, str]] = []
        for name in modules:
            if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
                raise exc.InvalidError(f"add_local_python_source takes module names, got {name!r}")
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin in (None, "built-in", "frozen"):
                raise exc.InvalidError(f"add_local_python_source: no local module or package {name!r}")
            if spec.submodule_search_locations:
                pkg = Path(next(iter(spec.submodule_search_locations))).resolve()
                entries += [
                    (str(p), f"/root/{name.replace('.', '/')}/{p.relative_to(pkg)}")
                    for p in _walk(pkg, tuple(ignore))
                ]
            else:
                entries.append((str(Path(spec.origin).resolve()), f"/root/{Path(spec.origin).name}"))
        return self._local(tuple(entries), "/", copy)

    def dockerfile_commands(
        self,
        *commands: str | list[str],
        context_dir: str | Path | None = None,
        build_args: dict[str, str] | None = None,
        force_build: bool = False,
        secrets: Sequence[Any] = (),
        gpu: Any = None,
        **kwargs: Any,
    ) -> Image:
        """Dockerfile instructions (no FROM) as steps on this image; see :meth:`from_dockerfile`."""
        _no_extra(kwargs, "dockerfile_commands()")
        names = _build_secrets(secrets, gpu)
        if _in_container():
            return self
        text = "\n".join(_flatten(commands, "dockerfile_commands"))
        return self._dockerfile(
            text, context_dir, build_args, "dockerfile_commands", None, require_from=False, secret_names=names
        )._forced(force_build, first=len(self._steps))

    def _dockerfile(
        self,
        text: str,
        context_dir: str | Path | None,
        build_args: dict[str, str] | None,
        source: str,
        add_python: str | None,
        *,
        require_from: bool,
        secret_names: list[str],
    ) -> Image:
        from vivace._sdk import dockerfile

        if build_args is not None and not (
            isinstance(build_args, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in build_args.items())
        ):
            raise exc.InvalidError("build_args must be a dict of str to str")
        ops = dockerfile.parse(
            text, context_dir=context_dir, build_args=build_args, require_from=require_from, source=source
        )
        image = self
        for op in ops:
            if op.kind == "from":
                image = Image.from_registry(op.value, add_python=add_python)
            elif op.kind == "run":  # RUN gets the build secrets as environment variables
                image = image._add(
                    _with_secrets(
                        {"kind": "run_commands", "commands": _flatten((op.value,), "RUN")}, secret_names
                    ),
                    False,
                )
            elif op.kind == "env":
                image = image.env(op.value) if op.value else image
            elif op.kind == "workdir":
                image = image.workdir(op.value)
            elif op.kind == "copy":
                for _, remote in op.value:
                    _check_remote(remote)
                image = image._local(tuple(op.value), "/", True)
            elif op.kind == "entrypoint":
                image = image.entrypoint(op.value)
            elif op.kind == "cmd":
                image = image.cmd(op.value)
            elif op.kind == "user":  # later RUN steps and the functions run as that user
                image = image._add({"kind": "user", "name": op.value}, False)
        return image

    def run_function(
        self,
        raw_f: Any,
        *,
        secrets: Sequence[Any] = (),
        gpu: Any = None,
        volumes: Any = None,
        network_file_systems: Any = None,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        force_build: bool = False,
        **options: Any,
    ) -> Image:
        """Run a Python function in the image (network on) and keep what it writes as a layer, e.g. to
        download model weights at build time. The function travels pickled by value (its module
        need not be in the image); its source, arguments and the chain before it make the layer's key.
        ``timeout``, ``cpu`` and ``memory`` are accepted for Modal compatibility; builds run under the
        worker's build limits."""
        unknown = set(options) - {"timeout", "cpu", "memory", "cloud", "region"}
        _no_extra({k: options[k] for k in unknown}, "run_function()")
        names = _build_secrets(secrets, gpu)
        if volumes or network_file_systems:
            raise exc.NotImplementedYetError("run_function(volumes=...) needs Volumes (storage primitives)")
        if not callable(raw_f) or isinstance(raw_f, type):
            raise exc.InvalidError(f"run_function takes a function, got {type(raw_f).__name__}")
        if _in_container():
            return self
        payload = _function_payload(raw_f, tuple(args), dict(kwargs or {}))
        archive = FileArchive(hashlib.sha256(payload).hexdigest(), payload)
        name = getattr(raw_f, "__qualname__", None) or getattr(raw_f, "__name__", "function")
        step = _checked(
            _with_secrets({"kind": "run_function", "digest": archive.digest, "name": str(name)[:200]}, names)
        )
        if force_build or _forced_by_environment():
            step["nonce"] = os.urandom(8).hex()  # (``secrets`` is the parameter here)
        self._add(step, False)  # the same checks as any step
        return Image((*self._steps, _Function(proto.canonical(step), archive)))

    @contextlib.contextmanager
    def imports(self) -> Iterator[None]:
        """Imports in this block may fail locally (the package is only in the image)."""
        from vivace.runtime_api import is_local

        try:
            yield
        except ImportError:
            if not is_local():
                raise

    # -- identity ---------------------------------------------------------------------------------
    def steps(self) -> list[dict[str, Any]]:
        """The canonical steps (local files archived and hashed). Validated like the control plane does.

        Files added with ``copy=False`` are not steps: they are attached at container start
        (:meth:`mounts`), so editing them changes no image id and builds nothing."""
        out: list[dict[str, Any]] = []
        for step in self._steps:
            if isinstance(step, _LocalFiles) and not step.copy:
                continue
            if isinstance(step, _Function):
                out.append(json.loads(step.step))
            elif isinstance(step, _LocalFiles):
                archive = self._archive(step)
                out.append(
                    {"kind": "add_files", "digest": archive.digest, "remote": step.remote, "copy": step.copy}
                )
            else:
                out.append(step)
        try:
            return proto.validate_steps(out)
        except proto.StepError as err:
            raise exc.InvalidError(f"image: {err}") from None

    def mounts(self) -> list[str]:
        """The digests of the ``copy=False`` files' archives, in order: attached over the image's layers
        when a container starts (the last on top)."""
        return [self._archive(s).digest for s in self._steps if isinstance(s, _LocalFiles) and not s.copy]

    def archives(self) -> dict[str, FileArchive]:
        """The local-file archives the steps and mounts refer to, by digest (what a build uploads)."""
        self.steps()
        self.mounts()
        payloads = {s.archive.digest: s.archive for s in self._steps if isinstance(s, _Function)}
        return {**payloads, **self._archives}

    @property
    def object_id(self) -> str:
        return self._fixed_id or proto.image_id(self.steps())

    @synchronized
    async def build(self, *, show_logs: bool | None = None) -> Image:
        """Build the image now (cached layers are reused); raises ``ImageBuildError`` on failure."""
        from vivace._sdk import images as builder
        from vivace._sdk.output import is_enabled

        await builder.build(self, show_logs=is_enabled() if show_logs is None else show_logs)
        return self

    # -- helpers ----------------------------------------------------------------------------------
    def _add(self, step: dict[str, Any], force_build: bool) -> Image:
        if self._fixed_id is not None:
            raise exc.InvalidError("an image from Image.from_id cannot take more steps")
        if any(isinstance(s, _LocalFiles) and not s.copy for s in self._steps):
            raise exc.InvalidError(
                f"{step['kind']} comes after add_local_*(copy=False), whose files are only attached when a "
                "container starts: put build steps before it, or pass copy=True to bake the files into a layer"
            )
        return Image((*self._steps, _checked(step)))._forced(force_build)

    def _forced(self, force_build: bool, first: int | None = None) -> Image:
        """This image, with step ``first`` (default: the last) and so every later one built again when
        ``force_build`` (or ``MODAL_FORCE_BUILD=1``/``VIVACE_FORCE_BUILD=1``) asks for it."""
        if not isinstance(force_build, bool):
            raise exc.InvalidError(f"force_build must be True or False, got {force_build!r}")
        if force_build or _forced_by_environment():
            # a nonce in the step itself: its key changes, so it and every later step build again
            steps = list(self._steps)
            start = first if first is not None else len(steps) - 1
            for i in range(start, len(steps)):  # files added with copy=True change only with their content
                if isinstance(steps[i], dict):
                    steps[i] = {**steps[i], "nonce": secrets.token_hex(8)}
                    break
            return Image(tuple(steps))
        return self

    def _pip(
        self,
        kind: str,
        packages: tuple[str | list[str], ...],
        find_links: str | None,
        index_url: str | None,
        extra_index_url: str | None,
        pre: bool,
        extra_options: str,
        force_build: bool,
    ) -> Image:
        step: dict[str, Any] = {"kind": kind, "packages": _flatten(packages, kind)}
        for key, value in (
            ("find_links", find_links),
            ("index_url", index_url),
            ("extra_index_url", extra_index_url),
        ):
            if value is not None:
                step[key] = value
        if pre:
            step["pre"] = True
        if extra_options:
            step["extra_options"] = extra_options
        return self._add(step, force_build)

    def _secrets_on_last(self, names: list[str]) -> Image:
        """This image with ``names`` as the build secrets of its last step (just added)."""
        if not names:
            return self
        *rest, last = self._steps
        return Image((*rest, _checked(_with_secrets(last, names))))  # type: ignore[arg-type]

    def _local(self, entries: tuple[tuple[str, str], ...], remote: str, copy: bool) -> Image:
        if not isinstance(copy, bool):
            raise exc.InvalidError(f"copy must be True or False, got {copy!r}")
        if copy and any(isinstance(s, _LocalFiles) and not s.copy for s in self._steps):
            raise exc.InvalidError(
                "add_local_*(copy=True) comes after add_local_*(copy=False): put the copied files first"
            )
        if self._fixed_id is not None:
            raise exc.InvalidError("an image from Image.from_id cannot take more steps")
        return Image((*self._steps, _LocalFiles(entries, remote, copy)))

    def _archive(self, step: _LocalFiles) -> FileArchive:
        if step in self._archived:
            return self._archived[step]
        raw = io.BytesIO()
        total = 0
        with tarfile.open(fileobj=raw, mode="w") as tar:
            for local, remote in sorted(step.entries, key=lambda e: e[1]):
                try:
                    data = Path(local).read_bytes()
                    mode = os.stat(local).st_mode & 0o777
                except OSError as err:
                    raise exc.InvalidError(f"cannot read {local} for the image: {err}") from None
                total += len(data)
                if total > MAX_LOCAL_FILES:
                    raise exc.InvalidError(f"local files of one image step exceed {MAX_LOCAL_FILES} bytes")
                info = tarfile.TarInfo(remote.lstrip("/"))
                info.size, info.mode, info.mtime = len(data), mode | 0o444, 0
                tar.addfile(info, io.BytesIO(data))
        blob = gzip.compress(raw.getvalue(), mtime=0)
        archive = FileArchive(hashlib.sha256(blob).hexdigest(), blob)
        self._archives[archive.digest] = archive
        self._archived[step] = archive
        return archive


def _forced_by_environment() -> bool:
    return os.environ.get("MODAL_FORCE_BUILD") == "1" or os.environ.get("VIVACE_FORCE_BUILD") == "1"


def _function_payload(f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """``(f, args, kwargs)`` pickled with ``f``'s module by value when it is the user's own file (the
    build container has only the image, not the app's source)."""
    import cloudpickle

    module = sys.modules.get(getattr(f, "__module__", "") or "")
    file = getattr(module, "__file__", None) or ""
    installed = any(part in ("site-packages", "dist-packages") for part in Path(file).parts)
    by_value = module is not None and module.__name__ != "__main__" and bool(file) and not installed
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps((f, args, kwargs))  # type: ignore[no-any-return]
    except Exception as err:
        raise exc.InvalidError(f"run_function: cannot pickle {f!r} with its arguments: {err}") from None
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def _in_container() -> bool:
    from vivace.runtime_api import is_local

    return not is_local()


def _checked(step: dict[str, Any]) -> dict[str, Any]:
    try:
        proto.validate_step(step)
    except proto.StepError as err:
        raise exc.InvalidError(f"{step['kind']}: {err}") from None
    return step


def _flatten(items: tuple[str | list[str], ...], where: str) -> list[str]:
    out: list[str] = []
    for item in items:
        for value in item if isinstance(item, (list, tuple)) else [item]:
            if not isinstance(value, str):
                raise exc.InvalidError(f"{where} takes strings, got {type(value).__name__} {value!r}")
            out.append(value)
    if not out:
        raise exc.InvalidError(f"{where} needs at least one item")
    return out


def _build_secrets(secrets: Sequence[Any], gpu: Any) -> list[str]:
    """The names of a build step's secrets. A step names them (its layer's key holds the names, never the
    values); an inline secret (``from_dict`` ...) has no name, and a build belongs to no app to keep it."""
    from vivace.secret import Secret

    if gpu is not None:
        raise exc.NotImplementedYetError("build steps with gpu= need GPU builds")
    if isinstance(secrets, (str, bytes, Secret)) or not isinstance(secrets, Sequence):
        raise exc.InvalidError(f"secrets must be a list of vivace.Secret, got {type(secrets).__name__}")
    names: list[str] = []
    for secret in secrets:
        if not isinstance(secret, Secret):
            raise exc.InvalidError(f"secrets must be vivace.Secret objects, got a {type(secret).__name__}")
        if secret.name is None:
            raise exc.NotImplementedYetError(
                "an image build takes named secrets only (Secret.from_name): store the values with "
                "`vivace secret create NAME KEY=VALUE` (or Secret.objects.create) and name it"
            )
        if secret.name not in names:
            names.append(secret.name)
    return names


def _with_secrets(step: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {**step, "secrets": names} if names else step


def _no_extra(kwargs: dict[str, Any], where: str) -> None:
    if kwargs:
        raise exc.InvalidError(f"{where}: unknown parameter(s) {', '.join(sorted(kwargs))}")


def _check_remote(remote: str) -> None:
    if not isinstance(remote, str) or not remote.startswith("/") or ".." in remote.split("/"):
        raise exc.InvalidError(f"the path inside the image must be absolute without '..', got {remote!r}")


def _walk(root: Path, ignore: tuple[str, ...]) -> list[Path]:
    import fnmatch

    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if set(rel.parts) & SKIP_DIRS or p.name.endswith(".pyc") or not p.is_file():
            continue
        if any(fnmatch.fnmatch(str(rel), pattern) for pattern in ignore):
            continue
        out.append(p)
    return out
