"""Image steps as they travel between the SDK, the control plane and workers, and their keys.

An image is a chain of steps; each step is a canonical JSON object. A layer's key is the SHA-256 of its
parent's key and its step, so equal prefixes share layers and a changed step changes its key and every
later one. Steps that read local files carry the digest of the files' deterministic archive (uploaded
to the blob store), never the local path. ``validate_step`` checks everything a worker will act on:
the control plane calls it on every request, so a bad step is a 422, never a failed build.
"""

import hashlib
import json
import re
from typing import Any, Dict, List, Optional

IMAGE = "im"
SUPPORTED_PYTHONS = {"3.11": "bookworm", "3.13": "trixie"}  # what Debian ships, by suite
MAX_STEPS = 256
MAX_ITEMS = 1000

APT_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:_-]+)?")
# a requirement as pip reads it: a name with extras, version specifiers, URLs or markers; never a
# shell metacharacter that could end the argument (the worker also quotes every argument)
PIP_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-\[\], <>=!~*:/@+'\";()]*")
PYTHON_VERSION = re.compile(r"3\.[0-9]{1,2}(\.[0-9]{1,2})?")
USER_SPEC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DIGEST = re.compile(r"[0-9a-f]{64}")

# kind -> (required fields, optional fields)
STEP_FIELDS: Dict[str, Any] = {
    "debian_slim": ({"python_version"}, set()),
    "from_registry": ({"reference"}, {"auth_secret"}),
    "add_python": ({"python_version"}, set()),
    "run_function": ({"digest", "name"}, {"secrets"}),
    "apt_install": ({"packages"}, {"secrets"}),
    "pip_install": (
        {"packages"},
        {"index_url", "extra_index_url", "find_links", "pre", "extra_options", "secrets"},
    ),
    "uv_pip_install": (
        {"packages"},
        {"index_url", "extra_index_url", "find_links", "pre", "extra_options", "secrets"},
    ),
    "run_commands": ({"commands"}, {"secrets"}),
    "env": ({"vars"}, set()),
    "workdir": ({"path"}, set()),
    "entrypoint": ({"argv"}, set()),
    "cmd": ({"argv"}, set()),
    "user": ({"name"}, set()),
    "add_files": ({"digest", "remote"}, {"copy"}),
    "force_build": ({"nonce"}, set()),
    # a sandbox's filesystem changes (Sandbox.snapshot_filesystem): the blob is the layer itself
    "snapshot": ({"digest"}, set()),
}
BASE_KINDS = {"debian_slim", "from_registry"}
# a build step names the secrets whose variables its commands get (by name: the layer's key holds names,
# never values, so a rotated credential rebuilds nothing); a registry base names one with
# REGISTRY_USERNAME and REGISTRY_PASSWORD (``auth_secret``)
SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_BUILD_SECRETS = 16
REGISTRY_SECRET_KEYS = ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")
METADATA_KINDS = {"env", "workdir", "entrypoint", "cmd", "user"}  # no files: the layer is empty


class StepError(ValueError):
    """An image step is malformed."""


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def layer_key(parent: Optional[str], step: Dict[str, Any]) -> str:
    return hashlib.sha256(canonical({"parent": parent, "step": step}).encode()).hexdigest()


def layer_keys(steps: List[Dict[str, Any]]) -> List[str]:
    keys: List[str] = []
    parent: Optional[str] = None
    for step in steps:
        parent = layer_key(parent, step)
        keys.append(parent)
    return keys


def image_id(steps: List[Dict[str, Any]]) -> str:
    return f"{IMAGE}-{layer_keys(steps)[-1][:32]}"


def validate_steps(steps: Any) -> List[Dict[str, Any]]:
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_STEPS:
        raise StepError(f"an image is a list of 1 to {MAX_STEPS} steps")
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            raise StepError(f"step {i} must be an object")
        try:
            validate_step(step)
        except StepError as err:
            raise StepError(f"step {i} ({step.get('kind')}): {err}") from None
        if (step["kind"] in BASE_KINDS) != (i == 0):
            raise StepError(f"step {i}: an image starts with exactly one base (debian_slim or from_registry)")
    return steps


def validate_step(step: Dict[str, Any]) -> None:
    kind = step.get("kind")
    if kind not in STEP_FIELDS:
        raise StepError(f"unknown step kind {kind!r}")
    required, optional = STEP_FIELDS[kind]
    keys = set(step) - {"kind", "nonce"}  # a nonce (force_build) may mark any step
    if not required <= keys or keys - required - optional:
        raise StepError(f"needs {sorted(required)}" + (f", may have {sorted(optional)}" if optional else ""))
    if "nonce" in step:
        _nonce(step)
    if "secrets" in step:
        _secret_names(step["secrets"])
    check = _CHECKS.get(kind)
    if check is not None:
        check(step)


def _strings(value: Any, what: str, pattern: "Optional[re.Pattern[str]]" = None) -> None:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ITEMS:
        raise StepError(f"{what} must be a list of 1 to {MAX_ITEMS} strings")
    for item in value:
        if not isinstance(item, str) or not item or "\n" in item or "\0" in item or len(item) > 4096:
            raise StepError(f"{what}: {item!r} is not a one-line string")
        if pattern is not None and not pattern.fullmatch(item):
            raise StepError(f"{what}: {item!r} is not valid")


def _optional_str(step: Dict[str, Any], name: str) -> None:
    value = step.get(name)
    if value is not None and (not isinstance(value, str) or not value or "\n" in value or len(value) > 4096):
        raise StepError(f"{name} must be a one-line string")


def _debian(step: Dict[str, Any]) -> None:
    if step["python_version"] not in SUPPORTED_PYTHONS:
        raise StepError(
            f"python_version {step['python_version']!r} is not one Debian ships: use one of "
            f"{', '.join(sorted(SUPPORTED_PYTHONS))}"
        )


def _registry(step: Dict[str, Any]) -> None:
    ref = step["reference"]
    if not isinstance(ref, str) or not ref or any(c.isspace() for c in ref) or len(ref) > 512:
        raise StepError(f"{ref!r} is not an image reference such as 'python:3.11-slim'")
    if "auth_secret" in step:
        _secret_names([step["auth_secret"]], "auth_secret")


def _secret_names(value: Any, what: str = "secrets") -> None:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_BUILD_SECRETS:
        raise StepError(f"{what} must be a list of 1 to {MAX_BUILD_SECRETS} secret names")
    for name in value:
        if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
            raise StepError(f"{what}: {name!r} is not a secret name")


def step_secrets(step: Dict[str, Any]) -> List[str]:
    """The names of the secrets a step's build uses (its own, or its registry credentials)."""
    names = list(step.get("secrets") or [])
    if step.get("auth_secret"):
        names.append(step["auth_secret"])
    return names


def _add_python(step: Dict[str, Any]) -> None:
    version = step["python_version"]
    if not isinstance(version, str) or not PYTHON_VERSION.fullmatch(version):
        raise StepError(f"python_version must look like '3.12' or '3.12.7', got {version!r}")


def _apt(step: Dict[str, Any]) -> None:
    _strings(step["packages"], "packages", APT_PACKAGE)


def _pip(step: Dict[str, Any]) -> None:
    _strings(step["packages"], "packages", PIP_REQUIREMENT)
    for name in ("index_url", "extra_index_url", "find_links"):
        _optional_str(step, name)
    if not isinstance(step.get("pre", False), bool):
        raise StepError("pre must be true or false")
    extra = step.get("extra_options")
    if extra is not None:
        _optional_str(step, "extra_options")


def _commands(step: Dict[str, Any]) -> None:
    _strings(step["commands"], "commands")


def _env(step: Dict[str, Any]) -> None:
    env = step["vars"]
    if not isinstance(env, dict) or not env:
        raise StepError("vars must be a non-empty object of strings")
    for k, v in env.items():
        if not ENV_NAME.fullmatch(k) or not isinstance(v, str) or "\0" in v:
            raise StepError(f"{k!r}={v!r} is not a valid environment variable")


def _absolute(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or ".." in value.split("/"):
        raise StepError(f"{what} must be an absolute path without '..', got {value!r}")


def _workdir(step: Dict[str, Any]) -> None:
    _absolute(step["path"], "path")


def _argv(step: Dict[str, Any]) -> None:
    argv = step["argv"]
    if not isinstance(argv, list) or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise StepError("argv must be a list of strings")


def _files(step: Dict[str, Any]) -> None:
    if not isinstance(step["digest"], str) or not DIGEST.fullmatch(step["digest"]):
        raise StepError("digest must be the hex sha256 of the files' archive")
    _absolute(step["remote"], "remote")
    if not isinstance(step.get("copy", True), bool):
        raise StepError("copy must be true or false")


def _snapshot(step: Dict[str, Any]) -> None:
    if not isinstance(step["digest"], str) or not DIGEST.fullmatch(step["digest"]):
        raise StepError("digest must be the hex sha256 of the snapshot's layer")


def _user(step: Dict[str, Any]) -> None:
    if not isinstance(step["name"], str) or not USER_SPEC.fullmatch(step["name"]):
        raise StepError(f"name must be a user (or uid), optionally :group, got {step['name']!r}")


def _function(step: Dict[str, Any]) -> None:
    if not isinstance(step["digest"], str) or not DIGEST.fullmatch(step["digest"]):
        raise StepError("digest must be the hex sha256 of the pickled function")
    name = step["name"]
    if not isinstance(name, str) or not name or len(name) > 200 or "\n" in name:
        raise StepError("name must be a short one-line string")


def _nonce(step: Dict[str, Any]) -> None:
    if not isinstance(step["nonce"], str) or not 1 <= len(step["nonce"]) <= 64:
        raise StepError("nonce must be a short string")


_CHECKS = {
    "debian_slim": _debian,
    "from_registry": _registry,
    "add_python": _add_python,
    "run_function": _function,
    "user": _user,
    "apt_install": _apt,
    "pip_install": _pip,
    "uv_pip_install": _pip,
    "run_commands": _commands,
    "env": _env,
    "workdir": _workdir,
    "entrypoint": _argv,
    "cmd": _argv,
    "add_files": _files,
    "force_build": _nonce,
    "snapshot": _snapshot,
}


# what a layer may set besides its files (a registry image's config; the interpreter a base provides)
LAYER_CONFIG_FIELDS = {"env", "workdir", "entrypoint", "cmd", "user", "python"}


def validate_layer_config(config: Any) -> Dict[str, Any]:
    if not isinstance(config, dict) or set(config) - LAYER_CONFIG_FIELDS:
        raise StepError(f"a layer config is an object with some of {sorted(LAYER_CONFIG_FIELDS)}")
    env = config.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "\0" not in k + v for k, v in env.items()
    ):
        raise StepError("env must be an object of strings")
    for name in ("workdir", "python"):
        if name in config:
            _absolute(config[name], name)
    for name in ("entrypoint", "cmd"):
        if config.get(name) is not None:
            _argv({"argv": config[name]})
    if not isinstance(config.get("user", ""), str):
        raise StepError("user must be a string")
    return config
