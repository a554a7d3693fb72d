"""Function specs as they travel between the SDK, the control plane and workers.

``FunctionSpec.from_dict`` validates everything it is given: the control plane calls it on every
request body, so a malformed spec is a 422 with a clear message, never a half-registered function.
"""

import itertools
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

MAX_GPUS = 8  # per container, as Modal allows
MAX_GPU_CHOICES = 16
IMAGE_ID = re.compile(r"im-[0-9a-f]{32}")
MAX_IMAGE_MOUNTS = 64
MAX_BATCH_SIZE = 1000
MAX_BATCH_WAIT_MS = 10 * 60 * 1000
# a GPU model as functions ask for it: upper-case, e.g. "H100", "A100-80GB", "RTX-PRO-6000"
GPU_TYPE = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,63}")


class SpecError(ValueError):
    """A function spec field is missing or has the wrong type or range."""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 0
    backoff_coefficient: float = 2.0
    initial_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        raw = self.initial_delay * (self.backoff_coefficient ** max(0, retry_number - 1))
        return min(self.max_delay, raw)


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    module: str
    qualname: str
    serialized: bool = False
    is_generator: bool = False
    cpu: float = 0.125
    cpu_limit: Optional[float] = None
    memory: int = 128
    memory_limit: Optional[int] = None
    timeout: float = 300.0
    startup_timeout: Optional[float] = None
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    min_containers: int = 0
    max_containers: Optional[int] = None
    buffer_containers: int = 0
    scaledown_window: float = 60.0
    single_use_containers: bool = False
    block_network: bool = False
    restrict_modal_access: bool = False  # containers reach only their own inputs through their socket
    max_inputs: int = 1
    target_inputs: int = 1
    env: Dict[str, str] = field(default_factory=dict)
    source_hash: Optional[str] = None
    runtime: Optional[str] = None
    # GPU choices in preference order, each {"type": "H100" or None (any model), "count": 1-8}; None: no GPU
    gpu: Optional[List[Dict[str, Any]]] = None
    # @batched: a container hands the function lists of up to batch_max_size inputs (0: not batched),
    # waiting at most batch_wait_ms after the first for more
    batch_max_size: int = 0
    batch_wait_ms: int = 0
    # @app.cls: the function is a class; each input names one of its methods
    is_class: bool = False
    methods: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # name -> {"is_generator": bool}
    # a class instance's parameter values (bytes as {"b64": ...}); set on variants only
    params: Optional[Dict[str, Any]] = None
    # the function this one derives from (parameters bound, with_options, ...): hidden from lookups
    variant_of: Optional[str] = None
    # the image its containers start from (built before the function is registered); None: the base
    image_id: Optional[str] = None
    # local files attached over the image at container start (add_local_*(copy=False)): the sha256 of
    # each gzip'd tar in the blob store, top last; changing them needs no image build
    image_mounts: List[str] = field(default_factory=list)
    # the container's writable layer is a filesystem of this many MiB (None: the worker's disk)
    ephemeral_disk: Optional[int] = None
    # secrets whose values the worker adds to the container's environment (ids st-..., in order: a later
    # one wins a key both set); the values travel only to workers starting this function's containers
    secrets: List[str] = field(default_factory=list)
    # volumes mounted in its containers: absolute path -> {"id": "vo-...", "read_only": bool}
    volumes: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # a sandbox's own settings (protocol/sandboxes.py): its container runs their command, not functions
    sandbox: Optional[Dict[str, Any]] = None
    # when the control plane calls it with no arguments (protocol/schedules.py): cron or period
    schedule: Optional[Dict[str, Any]] = None
    # a web endpoint (protocol/web.py): HTTP requests to its URL become its inputs; a class's web methods
    # carry theirs in ``methods``
    web: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> "FunctionSpec":
        if not isinstance(raw, dict):
            raise SpecError("function spec must be an object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SpecError(f"unknown function spec fields: {', '.join(unknown)}")
        data = dict(raw)
        retries = data.pop("retries", None)
        spec = cls(**data, retries=_retry_from(retries))
        spec.validate()
        return spec

    def validate(self) -> None:
        _check_str(self.name, "name")
        _check_str(self.module, "module")
        _check_str(self.qualname, "qualname")
        for flag in ("serialized", "is_generator", "single_use_containers"):
            if not isinstance(getattr(self, flag), bool):
                raise SpecError(f"{flag} must be a boolean")
        _check_num(self.cpu, "cpu", 0.001, 1024)
        if self.cpu_limit is not None:
            _check_num(self.cpu_limit, "cpu limit", self.cpu, 1024)
        _check_int(self.memory, "memory", 1, 16 * 1024 * 1024)
        if self.memory_limit is not None:
            _check_int(self.memory_limit, "memory limit", self.memory, 16 * 1024 * 1024)
        _check_num(self.timeout, "timeout", 1, 86400)
        if self.startup_timeout is not None:
            _check_num(self.startup_timeout, "startup_timeout", 1, 86400)
        _check_int(self.min_containers, "min_containers", 0, 10_000)
        if self.max_containers is not None:
            _check_int(self.max_containers, "max_containers", 1, 10_000)
            if self.max_containers < self.min_containers:
                raise SpecError(
                    f"max_containers ({self.max_containers}) must be at least min_containers "
                    f"({self.min_containers})"
                )
        _check_int(self.buffer_containers, "buffer_containers", 0, 10_000)
        _check_num(self.scaledown_window, "scaledown_window", 2, 3600)
        _check_int(self.max_inputs, "max_inputs", 1, 1000)
        _check_int(self.target_inputs, "target_inputs", 1, self.max_inputs)
        if not isinstance(self.env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()
        ):
            raise SpecError("env must map strings to strings")
        if self.source_hash is not None and not _is_sha256(self.source_hash):
            raise SpecError("source_hash must be a hex sha256")
        if self.runtime is not None:
            _check_str(self.runtime, "runtime")
        for flag in ("block_network", "restrict_modal_access", "serialized", "is_generator"):
            if not isinstance(getattr(self, flag), bool):
                raise SpecError(f"{flag} must be a boolean")
        _check_gpu(self.gpu)
        _check_int(self.batch_max_size, "max_batch_size", 0, MAX_BATCH_SIZE)
        _check_int(self.batch_wait_ms, "wait_ms", 0, MAX_BATCH_WAIT_MS)
        if self.batch_max_size and self.max_inputs > 1:
            raise SpecError("a function cannot be both batched and concurrent")
        _check_methods(self)
        _check_params(self.params)
        if self.variant_of is not None:
            _check_str(self.variant_of, "variant_of")
        if self.image_id is not None and not IMAGE_ID.fullmatch(str(self.image_id)):
            raise SpecError(f"image_id must look like im-<32 hex>, got {self.image_id!r}")
        if not isinstance(self.image_mounts, list) or len(self.image_mounts) > MAX_IMAGE_MOUNTS:
            raise SpecError(f"image_mounts must be a list of at most {MAX_IMAGE_MOUNTS} digests")
        if not all(isinstance(d, str) and _is_sha256(d) for d in self.image_mounts):
            raise SpecError("image_mounts must be hex sha256 digests")
        if self.ephemeral_disk is not None:
            _check_int(self.ephemeral_disk, "ephemeral_disk", 1, 3 << 20)
        _check_secrets(self.secrets)
        _check_volumes(self.volumes)
        if self.sandbox is not None:
            from vivace.protocol.sandboxes import SandboxSpecError, check_settings

            try:
                object.__setattr__(self, "sandbox", check_settings(self.sandbox))
            except SandboxSpecError as err:
                raise SpecError(str(err)) from None
        if self.schedule is not None:
            from vivace.protocol.schedules import ScheduleError, check_schedule

            try:
                object.__setattr__(self, "schedule", check_schedule(self.schedule))
            except ScheduleError as err:
                raise SpecError(str(err)) from None
        if self.web is not None:
            object.__setattr__(self, "web", _checked_web(self.web))
            if self.is_class or self.is_generator or self.batch_max_size or self.schedule is not None:
                raise SpecError("a web endpoint cannot be a class, a generator, batched or scheduled")
        if self.image_mounts and self.image_id is None:
            raise SpecError("image_mounts attach files over an image: image_id is required")
        r = self.retries
        _check_int(r.max_retries, "retries", 0, 10)
        _check_num(r.backoff_coefficient, "backoff_coefficient", 1.0, 10.0)
        _check_num(r.initial_delay, "initial_delay", 0.0, 60.0)
        _check_num(r.max_delay, "max_delay", 1.0, 60.0)


def _retry_from(raw: Any) -> RetryPolicy:
    if raw is None:
        return RetryPolicy()
    if not isinstance(raw, dict) or set(raw) - set(RetryPolicy.__dataclass_fields__):
        raise SpecError(
            "retries must be an object with max_retries, backoff_coefficient, initial_delay, max_delay"
        )
    return RetryPolicy(**raw)


def _check_methods(spec: "FunctionSpec") -> None:
    if not isinstance(spec.is_class, bool):
        raise SpecError("is_class must be a boolean")
    if not isinstance(spec.methods, dict) or (spec.methods and not spec.is_class):
        raise SpecError("methods must be an object, and only a class has methods")
    for name, info in spec.methods.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise SpecError(f"method names must be Python identifiers, got {name!r}")
        if (
            not isinstance(info, dict)
            or not {"is_generator"} <= set(info) <= {"is_generator", "web"}
            or not isinstance(info["is_generator"], bool)
        ):
            raise SpecError(f"method {name!r} must be described as {{'is_generator': bool, 'web': ...}}")
        if info.get("web") is not None:
            info["web"] = _checked_web(info["web"])
            if info["is_generator"]:
                raise SpecError(f"method {name!r}: a web endpoint cannot be a generator")


def _checked_web(raw: Any) -> Dict[str, Any]:
    from vivace.protocol.web import WebSpecError, check_web

    try:
        return check_web(raw)
    except WebSpecError as err:
        raise SpecError(str(err)) from None


MAX_SECRETS = 64
MAX_VOLUMES = 32
SECRET_ID = re.compile(r"st-[0-9A-Za-z]{1,64}")
VOLUME_ID = re.compile(r"vo-[0-9A-Za-z]{1,64}")
# where a volume may not be mounted: the runtime's own paths and the system's
RESERVED_MOUNTS = ("/", "/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64",
                   "/src", "/run", "/tmp", "/var", "/boot")  # fmt: skip


def _check_secrets(value: Any) -> None:
    if not isinstance(value, list) or len(value) > MAX_SECRETS:
        raise SpecError(f"secrets must be a list of at most {MAX_SECRETS} secret ids")
    if not all(isinstance(s, str) and SECRET_ID.fullmatch(s) for s in value):
        raise SpecError("secrets must be secret ids (st-...)")


def mount_path_problem(path: Any) -> Optional[str]:
    """Why ``path`` cannot be a volume's mount point in a container, or None."""
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 256:
        return f"a volume's mount point must be an absolute path, got {path!r}"
    parts = path.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts) or "\0" in path:
        return f"a volume's mount point must be a normalised absolute path, got {path!r}"
    top = "/" + parts[0]
    if path in RESERVED_MOUNTS or (top in RESERVED_MOUNTS and top not in ("/tmp", "/var", "/run")):
        return f"a volume cannot be mounted at {path!r}: the container's own files live there"
    return None


def _check_volumes(value: Any) -> None:
    if not isinstance(value, dict) or len(value) > MAX_VOLUMES:
        raise SpecError(f"volumes must map at most {MAX_VOLUMES} mount points to volumes")
    paths = sorted(value)
    for path in paths:
        problem = mount_path_problem(path)
        if problem:
            raise SpecError(problem)
        ref = value[path]
        if (
            not isinstance(ref, dict)
            or set(ref) != {"id", "read_only"}
            or not (isinstance(ref["id"], str) and VOLUME_ID.fullmatch(ref["id"]))
            or not isinstance(ref["read_only"], bool)
        ):
            raise SpecError(f"volume at {path}: must be {{'id': 'vo-...', 'read_only': bool}}")
    for a, b in itertools.pairwise(paths):
        if b.startswith(a.rstrip("/") + "/"):
            raise SpecError(f"volume mount points cannot nest: {a} and {b}")


def _check_params(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or len(value) > 64:
        raise SpecError("params must be an object of at most 64 parameters")
    for name, v in value.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise SpecError(f"parameter names must be Python identifiers, got {name!r}")
        ok = isinstance(v, (str, int, bool)) or (
            isinstance(v, dict) and set(v) == {"b64"} and isinstance(v["b64"], str)
        )
        if not ok:
            raise SpecError(f"parameter {name!r} must be a str, int, bool or bytes value")


def _check_gpu(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_GPU_CHOICES:
        raise SpecError(f"gpu must be null or a list of 1 to {MAX_GPU_CHOICES} choices")
    for choice in value:
        if not isinstance(choice, dict) or set(choice) != {"type", "count"}:
            raise SpecError("each gpu choice must be an object with exactly 'type' and 'count'")
        kind = choice["type"]
        if kind is not None and not (isinstance(kind, str) and GPU_TYPE.fullmatch(kind)):
            raise SpecError(f"gpu type must be null (any model) or an upper-case model name, got {kind!r}")
        _check_int(choice["count"], "gpu count", 1, MAX_GPUS)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _check_str(value: Any, name: str) -> None:
    if not isinstance(value, str) or not value or len(value) > 512:
        raise SpecError(f"{name} must be a non-empty string")


def _check_int(value: Any, name: str, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise SpecError(f"{name} must be between {lo} and {hi}, got {value}")


def _check_num(value: Any, name: str, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SpecError(f"{name} must be a number, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise SpecError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
