"""Validation of ``@app.function`` parameters: every bad value is an ``InvalidError`` naming it.

Parameters whose feature a later release implements raise ``NotImplementedYetError`` instead of
being silently ignored.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from typing import Any

from vivace.exception import InvalidError, NotImplementedYetError
from vivace.protocol.functions import GPU_TYPE, MAX_GPU_CHOICES, MAX_GPUS
from vivace.retries import Retries

RENAMED = {
    "keep_warm": "min_containers",
    "concurrency_limit": "max_containers",
    "container_idle_timeout": "scaledown_window",
    "allow_concurrent_inputs": "the @vivace.concurrent(max_inputs=...) decorator",
}

# parameter -> (feature, value that means "not used")
NOT_YET: dict[str, tuple[str, Any]] = {
    "schedule": ("schedules (web endpoints and schedules)", None),
    "cloud": ("cloud placement (cluster mode)", None),
    "region": ("region placement (cluster mode)", None),
    "nonpreemptible": ("non-preemptible placement (cluster mode)", False),
}

_snapshot_warned: set[str] = set()


def check_not_yet(name: str, value: Any) -> None:
    feature, unused = NOT_YET[name]
    if value is unused or (value in ([], {}, ()) and unused is None):
        return
    raise NotImplementedYetError(
        f"{name}={value!r} needs {feature}, which this release of vivace does not have yet; remove it for now"
    )


def reject_unknown(kwargs: dict[str, Any], where: str) -> None:
    for key in kwargs:
        if key in RENAMED:
            raise InvalidError(f"{where}: {key!r} was renamed; use {RENAMED[key]} instead")
    if kwargs:
        raise InvalidError(f"{where}: unknown parameter(s) {', '.join(sorted(kwargs))}")


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidError(f"{name} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidError(f"{name} must be between {lo} and {hi}, got {value!r}")
    return value


def cpu(value: Any) -> tuple[float, float | None]:
    if value is None:
        return 0.125, None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidError("cpu as a tuple must be (request, limit)")
        req, lim = _number("cpu request", value[0], 0.001, 1024), _number("cpu limit", value[1], 0.001, 1024)
        if lim < req:
            raise InvalidError(f"cpu limit ({lim:g}) must be at least the request ({req:g})")
        return req, lim
    return _number("cpu", value, 0.001, 1024), None


def memory(value: Any) -> tuple[int, int | None]:
    if value is None:
        return 128, None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidError("memory as a tuple must be (request, limit) in MiB")
        req, lim = (
            _integer("memory request", value[0], 1, 16 << 20),
            _integer("memory limit", value[1], 1, 16 << 20),
        )
        if lim < req:
            raise InvalidError(f"memory limit ({lim}) must be at least the request ({req})")
        return req, lim
    return _integer("memory", value, 1, 16 << 20), None


# Modal's GPU types; other names are accepted too (a worker registers whatever model it has)
GPU_TYPES = (
    "T4",
    "L4",
    "A10",
    "A10G",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "RTX-PRO-6000",
    "H100",
    "H200",
    "B200",
)
# spellings that stand for more than one model, tried in this order
GPU_ALIASES = {"B200+": ("B200", "B300")}
_GPU_SPEC = re.compile(r"(?P<type>[^:]*?)\s*(?::\s*(?P<count>[0-9]+))?", re.ASCII)


def gpu(value: Any) -> list[dict[str, Any]] | None:
    """``gpu=`` as GPU choices in preference order: ``[{"type": "H100", "count": 2}, ...]``.

    ``"TYPE"`` or ``"TYPE:N"``, case-insensitive; ``"any"`` is any model (type ``None``); ``"H100!"``
    is accepted (Vivace never substitutes another model); a list is a fallback order.
    """
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise InvalidError("gpu=[] asks for no GPU: leave gpu out (or pass None) instead")
    choices: list[dict[str, Any]] = []
    for item in items:
        for choice in _gpu_choices(item):
            if choice not in choices:
                choices.append(choice)
    if len(choices) > MAX_GPU_CHOICES:
        raise InvalidError(f"gpu lists {len(choices)} choices; at most {MAX_GPU_CHOICES} are allowed")
    return choices


def _gpu_choices(item: Any) -> list[dict[str, Any]]:
    if not isinstance(item, str):
        raise InvalidError(
            f"gpu must be a string such as 'H100' or 'A100-80GB:2', or a list of them; got {type(item).__name__}"
        )
    m = _GPU_SPEC.fullmatch(item.strip())
    if m is None or not m["type"]:
        raise InvalidError(f"gpu={item!r} is not 'TYPE' or 'TYPE:COUNT' (e.g. 'H100', 'A100-80GB:2', 'any')")
    count = int(m["count"] or 1)
    if not 1 <= count <= MAX_GPUS:
        raise InvalidError(f"gpu={item!r}: the count must be between 1 and {MAX_GPUS}, got {count}")
    name = m["type"].upper()
    if name in GPU_ALIASES:
        return [{"type": t, "count": count} for t in GPU_ALIASES[name]]
    name = name.removesuffix("!")  # "H100!": never upgraded to another model, which Vivace never does
    if name == "ANY":
        return [{"type": None, "count": count}]
    if not GPU_TYPE.fullmatch(name):
        raise InvalidError(
            f"gpu={item!r} is not a GPU type: use a model name such as {', '.join(GPU_TYPES)}, or 'any'"
        )
    return [{"type": name, "count": count}]


def retries(value: Any) -> Retries:
    if value is None:
        return Retries(max_retries=0)
    if isinstance(value, Retries):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 10:
            raise InvalidError(f"retries must be between 0 and 10, got {value}")
        return Retries(max_retries=value, initial_delay=0.0, backoff_coefficient=1.0)
    raise InvalidError(f"retries must be an int or vivace.Retries, got {type(value).__name__}")


def env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidError("env must be a dict of str to str")
    return dict(value)


def secrets(value: Any) -> list[Any]:
    """``secrets=``: a list of ``vivace.Secret`` (resolved to ids when the app is registered)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, (list, tuple)):
        raise InvalidError(f"secrets must be a list of vivace.Secret, got {type(value).__name__}")
    for item in value:
        if not hasattr(item, "_resolve_for"):
            raise InvalidError(f"secrets must be a list of vivace.Secret, got a {type(item).__name__}")
    return list(value)


def volumes(value: Any) -> dict[str, Any]:
    """``volumes=``: mount point -> ``vivace.Volume`` (or ``vol.read_only()``)."""
    from pathlib import PurePosixPath

    from vivace.protocol.functions import mount_path_problem

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidError(
            f"volumes must be a dict of mount point to vivace.Volume, got {type(value).__name__}"
        )
    out: dict[str, Any] = {}
    for path, vol in value.items():
        key = str(path) if isinstance(path, PurePosixPath) else path
        problem = mount_path_problem(key)
        if problem:
            raise InvalidError(problem)
        if not hasattr(vol, "_mount_ref"):
            raise InvalidError(f"volumes[{key!r}] must be a vivace.Volume, got a {type(vol).__name__}")
        out[key] = vol
    points = sorted(out)
    for a, b in itertools.pairwise(points):
        if b.startswith(a.rstrip("/") + "/"):
            raise InvalidError(f"volume mount points cannot nest: {a} and {b}")
    return out


def autoscaler(
    min_containers: Any, max_containers: Any, buffer_containers: Any, scaledown_window: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "min_containers": _integer(
            "min_containers", 0 if min_containers is None else min_containers, 0, 10_000
        ),
        "max_containers": None
        if max_containers is None
        else _integer("max_containers", max_containers, 1, 10_000),
        "buffer_containers": _integer("buffer_containers", buffer_containers or 0, 0, 10_000),
        "scaledown_window": _number(
            "scaledown_window", 60 if scaledown_window is None else scaledown_window, 2, 3600
        ),
    }
    if out["max_containers"] is not None and out["max_containers"] < out["min_containers"]:
        raise InvalidError(
            f"max_containers ({out['max_containers']}) must be at least min_containers ({out['min_containers']})"
        )
    return out


def timeout(name: str, value: Any, default: float | None) -> float | None:
    if value is None:
        return default
    return _number(name, value, 1, 86400)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidError(f"{name} must be True or False, got {value!r}")
    return value


def warn_snapshot(function_name: str) -> None:
    if function_name not in _snapshot_warned:
        _snapshot_warned.add(function_name)
        warnings.warn(
            f"{function_name}: enable_memory_snapshot=True has no effect yet in vivace; containers start normally",
            UserWarning,
            stacklevel=4,
        )


# with_options() keys -> what they change; region and cloud need later features
OPTION_KEYS = (
    "cpu",
    "memory",
    "gpu",
    "env",
    "secrets",
    "volumes",
    "retries",
    "timeout",
    "min_containers",
    "max_containers",
    "buffer_containers",
    "scaledown_window",
    "region",
    "cloud",
)


def spec_options(options: dict[str, Any], where: str) -> dict[str, Any]:
    """``with_options(**options)`` as the spec fields it overrides (validated like ``@app.function``)."""
    unknown = {k: v for k, v in options.items() if k not in OPTION_KEYS}
    reject_unknown(unknown, where)
    out: dict[str, Any] = {}
    for key in ("region", "cloud"):
        if key in options:
            check_not_yet(key, options[key])
    if options.get("secrets") is not None:
        out["secrets"] = secrets(options["secrets"])  # objects: the handle resolves them to ids
    if options.get("volumes") is not None:
        out["volumes"] = volumes(options["volumes"])
    if options.get("cpu") is not None:
        out["cpu"], out["cpu_limit"] = cpu(options["cpu"])
    if options.get("memory") is not None:
        out["memory"], out["memory_limit"] = memory(options["memory"])
    if "gpu" in options:
        out["gpu"] = gpu(options["gpu"])
    if options.get("env") is not None:
        out["env"] = env(options["env"])
    if options.get("retries") is not None:
        from dataclasses import asdict

        out["retries"] = asdict(retries(options["retries"]).to_policy())
    if options.get("timeout") is not None:
        out["timeout"] = timeout("timeout", options["timeout"], 300.0)
    if options.get("min_containers") is not None:
        out["min_containers"] = _integer("min_containers", options["min_containers"], 0, 10_000)
    if options.get("max_containers") is not None:
        out["max_containers"] = _integer("max_containers", options["max_containers"], 1, 10_000)
    if options.get("buffer_containers") is not None:
        out["buffer_containers"] = _integer("buffer_containers", options["buffer_containers"], 0, 10_000)
    if options.get("scaledown_window") is not None:
        out["scaledown_window"] = _number("scaledown_window", options["scaledown_window"], 2, 3600)
    return out


MAX_EPHEMERAL_DISK = 3 << 20  # MiB (3 TiB), as Modal's limit


def ephemeral_disk(value: Any) -> int | None:
    """``ephemeral_disk`` in MiB: the size of the container's writable layer (None: the worker's disk)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EPHEMERAL_DISK:
        raise InvalidError(
            f"ephemeral_disk is the writable layer's size in MiB, from 1 to {MAX_EPHEMERAL_DISK}; got {value!r}"
        )
    return value
