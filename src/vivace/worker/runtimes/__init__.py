"""Container runtimes behind one small port: crun, runc and runsc (``oci``), ``bwrap`` and ``process``.

A worker offers every runtime its host has, in order of preference; a container that names none
gets the first. The oci runtimes need root; ``bwrap`` also runs where the worker is not root (with
fewer guarantees, see ``bwrap.py``). ``process`` gives no isolation and is for development only.
"""

from __future__ import annotations

import logging
import os
import shutil

from vivace.worker.cgroups import CgroupError, detect
from vivace.worker.runtimes.base import (
    Capabilities,
    ContainerHandle,
    ContainerRuntime,
    ContainerSpec,
    ExitStatus,
    RuntimeContext,
)
from vivace.worker.runtimes.bwrap import BwrapRuntime, probe
from vivace.worker.runtimes.oci import OciRuntime
from vivace.worker.runtimes.process import ProcessRuntime

__all__ = [
    "FUNCTION_DEFAULTS",
    "PREFERENCE",
    "BwrapRuntime",
    "Capabilities",
    "ContainerHandle",
    "ContainerRuntime",
    "ContainerSpec",
    "ExitStatus",
    "ProcessRuntime",
    "RuntimeContext",
    "available_runtimes",
    "missing_runtimes",
]

log = logging.getLogger("vivace.worker")
PREFERENCE = ("crun", "runc", "bwrap", "process", "runsc")  # runsc only when asked for (sandboxes)
FUNCTION_DEFAULTS = ("crun", "runc", "bwrap", "process")
OCI = ("crun", "runc", "runsc")


def missing_runtimes() -> dict[str, str]:
    """Runtimes this host cannot offer, with the reason."""
    why: dict[str, str] = {}
    bwrap = probe()  # bubblewrap needs no root, but working user namespaces
    if bwrap is not None:
        why["bwrap"] = bwrap
    if os.geteuid() != 0:
        for name in OCI:
            why[name] = "needs root (run the worker as root, or use bwrap)"
        return why
    try:
        detect()
    except CgroupError as err:
        for name in OCI:
            why[name] = str(err)
        return why
    for name in OCI:
        if shutil.which(name) is None:
            why[name] = f"'{name}' is not installed (Debian: apt-get install {name})"
    return why


def available_runtimes(ctx: RuntimeContext) -> dict[str, ContainerRuntime]:
    """Every runtime this host has, most preferred first."""
    missing = missing_runtimes()
    found: dict[str, ContainerRuntime] = {}
    for name in PREFERENCE:
        if name in missing:
            continue
        if name == "process":
            found[name] = ProcessRuntime()
        elif name == "bwrap":
            found[name] = BwrapRuntime(ctx)
        else:
            found[name] = OciRuntime(name, shutil.which(name) or name, ctx)
    return found
