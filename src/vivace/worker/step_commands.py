"""The shell commands that build an image step, every package, URL and option validated and quoted
before anything runs (a bad step is an ``ImageBuildError``, never a shell injection), and the paths
the build container mounts them at. ``build.py`` runs them."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from vivace.exception import ImageBuildError
from vivace.protocol import images as protocol

BUILD_DIR = "/run/vivace-build"
UV_IN_CONTAINER = BUILD_DIR + "/bin/uv"
ADDED_PYTHON_DIR = "/usr/local/lib/vivace-python"  # where add_python installs CPython
FUNCTION_IN_CONTAINER = BUILD_DIR + "/function.pkl"  # run_function's payload, mounted for its step
RUNTIME_IN_BUILD = BUILD_DIR + "/runtime"  # vivace's runtime bundle (cloudpickle), for run_function
_RUN_FUNCTION = (
    "import sys; sys.path.append(" + repr(RUNTIME_IN_BUILD) + "); import cloudpickle; "
    "f, args, kwargs = cloudpickle.load(open(" + repr(FUNCTION_IN_CONTAINER) + ", 'rb')); "
    "print('running', getattr(f, '__qualname__', f), flush=True); f(*args, **kwargs)"
)


def commands_for(step: Mapping[str, Any]) -> list[str]:
    """The shell commands that build ``step``; every package, URL and option validated and quoted.

    Raises ImageBuildError, before anything runs, for anything that is not a clean package spec."""
    try:
        protocol.validate_step(dict(step))
    except protocol.StepError as err:
        raise ImageBuildError(f"{step.get('kind')} step: {err}") from None
    kind = step["kind"]
    if kind == "apt_install":
        packages = " ".join(shlex.quote(p) for p in step["packages"])  # protocol.APT_PACKAGE checked them
        return [
            "apt-get update",
            f"DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {packages}",
            "apt-get clean && rm -rf /var/lib/apt/lists/*",
        ]
    if kind in ("pip_install", "uv_pip_install"):
        argv = [UV_IN_CONTAINER, "pip", "install", "--system", "--break-system-packages", "--compile-bytecode",
                "--python", "python3"]  # fmt: skip
        for field, option in (("index_url", "--index-url"), ("extra_index_url", "--extra-index-url"),
                              ("find_links", "--find-links")):  # fmt: skip
            if step.get(field) is not None:
                argv += [option, _checked(step[field], _URL, field)]
        if step.get("pre"):
            argv += ["--prerelease", "allow"]
        if step.get("extra_options"):
            argv += [_checked(t, _OPTION_TOKEN, "extra_options") for t in _split(step["extra_options"])]
        argv += [_requirement(p) for p in step["packages"]]
        return [" ".join(shlex.quote(a) for a in argv)]
    if kind == "run_commands":
        return list(step["commands"])
    if kind == "run_function":  # the pickled (function, args, kwargs), with the runtime for cloudpickle
        return [
            f"python3 -c {shlex.quote(_RUN_FUNCTION)}",
        ]
    if kind == "add_python":  # a standalone CPython managed by uv, on PATH as python, python3 and pip
        version = step["python_version"]  # protocol.PYTHON_VERSION checked it
        uv = f"UV_PYTHON_DOWNLOADS=automatic UV_PYTHON_INSTALL_DIR={ADDED_PYTHON_DIR} {UV_IN_CONTAINER}"
        return [
            f"{uv} python install --no-bin {version}",
            f'py="$({uv} python find --managed-python {version})" && bin="$(dirname "$py")" && '
            'rm -f "$bin"/../lib/python3*/EXTERNALLY-MANAGED && mkdir -p /usr/local/bin && '
            'ln -sf "$py" /usr/local/bin/python3 && ln -sf "$py" /usr/local/bin/python && '
            'ln -sf "$bin/pip3" /usr/local/bin/pip && ln -sf "$bin/pip3" /usr/local/bin/pip3 && "$py" --version',
        ]
    raise ImageBuildError(f"a {kind} step runs no commands")


_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_VERSIONS = r"(?:===|==|!=|<=|>=|~=|<|>)\s*[A-Za-z0-9_.*+!-]+"
_URL = re.compile(r"(?:git\+)?https?://[A-Za-z0-9._~:/?#@!+,=%-]+")
_REQUIREMENT = re.compile(
    rf"(?:{_NAME}\s*(?:\[\s*(?:{_NAME}(?:\s*,\s*{_NAME})*)?\s*\])?\s*"
    rf"(?:\(?\s*{_VERSIONS}(?:\s*,\s*{_VERSIONS})*\s*\)?|@\s*{_URL.pattern})?|{_URL.pattern})"
    r"\s*(?:;(?P<marker>.*))?"
)
_MARKER_TOKEN = re.compile(
    r"\s*(?:(?P<word>[A-Za-z_]+)|===|==|!=|<=|>=|~=|<|>|[()]|'[\w.*+!~ -]*'|\"[\w.*+!~ -]*\")"
)
_MARKER_WORDS = {
    "python_version", "python_full_version", "os_name", "sys_platform", "platform_release", "platform_system",
    "platform_version", "platform_machine", "platform_python_implementation", "implementation_name",
    "implementation_version", "extra", "and", "or", "in", "not",
}  # fmt: skip
_OPTION_TOKEN = re.compile(r"[A-Za-z0-9._=:/@+,%-]+")


def _requirement(spec: str) -> str:
    m = _REQUIREMENT.fullmatch(spec.strip())
    ok = m is not None and (m["marker"] is None or _clean_marker(m["marker"]))
    if not ok:
        raise ImageBuildError(
            f"{spec!r} is not a package requirement (a name with extras, versions, an https URL or an "
            "environment marker, such as 'numpy>=1.26' or 'torch==2.3; sys_platform == \"linux\"')"
        )
    return spec.strip()


def _clean_marker(marker: str) -> bool:
    pos = 0
    while marker[pos:].strip():
        m = _MARKER_TOKEN.match(marker, pos)
        if m is None or (m["word"] is not None and m["word"] not in _MARKER_WORDS):
            return False
        pos = m.end()
    return True


def _checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.fullmatch(value):
        raise ImageBuildError(f"{what}: {value!r} is not allowed in a build (only plain URLs and options)")
    return value


def _split(options: str) -> list[str]:
    try:
        return shlex.split(options)
    except ValueError as err:
        raise ImageBuildError(f"extra_options: {err}") from None
