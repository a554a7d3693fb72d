"""NVIDIA GPUs on this worker: what NVML reports, and what a container needs to use the ones it is given.

Discovery talks to NVML (``libnvidia-ml.so.1``, installed with the driver) through ctypes, so the worker
needs no extra package. A container given GPUs gets exactly their device nodes (plus the driver's control
nodes), device-cgroup rules allowing only those, the driver's user-space libraries and tools mounted
read-only, and ``CUDA_VISIBLE_DEVICES`` / ``NVIDIA_VISIBLE_DEVICES`` naming their UUIDs.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("vivace.worker")

NVML_LIB = "libnvidia-ml.so.1"
DRIVER_LIB_DIR = "/usr/local/nvidia/lib64"  # where containers see the driver's libraries
DRIVER_BIN_DIR = "/usr/local/nvidia/bin"
CONTROL_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
# the driver's user-space libraries CUDA programs load (by soname prefix)
DRIVER_LIBRARIES = (
    "libcuda.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libcudadebugger.so",
    "libnvidia-gpucomp.so",
    "libnvidia-allocator.so",
    "libnvidia-cfg.so",
    "libnvidia-opencl.so",
)
DRIVER_TOOLS = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced")


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML's index on this worker (what the control plane assigns)
    uuid: str
    type: str  # normalized model, e.g. "H100", "A100-80GB"
    memory_mib: int
    minor: int  # /dev/nvidia<minor>
    name: str = ""  # NVML's full name

    def registration(self) -> dict[str, Any]:
        return {"index": self.index, "uuid": self.uuid, "type": self.type, "memory_mib": self.memory_mib}


def normalize_type(name: str, memory_mib: int = 0) -> str:
    """NVML's product name -> the type users ask for (Modal's spellings where one exists).

    "NVIDIA H100 80GB HBM3" -> "H100"; "NVIDIA A100-SXM4-80GB" -> "A100-80GB"; "Tesla T4" -> "T4"."""
    n = name.strip().upper()
    while (m := re.match(r"(NVIDIA|TESLA|QUADRO|GEFORCE)\s+", n)) is not None:
        n = n[m.end() :]
    if n.startswith("A100"):
        if "80GB" in n or memory_mib > 60_000:
            return "A100-80GB"
        return "A100-40GB" if ("40GB" in n or memory_mib) else "A100"
    for known in ("H200", "H100", "B200", "GH200", "L40S", "L40", "A10G", "A10", "L4", "T4", "V100", "A40"):
        if re.match(rf"{known}(\b|[-_ ])", n + " "):
            return known
    # others: the model's words, without form factor and memory ("RTX 4090" -> "RTX-4090")
    words = [w for w in re.split(r"[\s_]+", n) if w and not re.fullmatch(r"PCIE|SXM\d*|HBM\d*E?|\d+GB", w)]
    # what the control plane accepts as a type: [A-Z0-9][A-Z0-9._-]{0,63}
    cleaned = re.sub(r"[^A-Z0-9._]+", "-", "-".join(words)).strip("-._")[:64]
    return cleaned or "UNKNOWN"


class NvmlError(RuntimeError):
    pass


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def discover(lib: str = NVML_LIB) -> tuple[list[Gpu], str]:
    """The GPUs NVML reports, and a line on how that went (for logs and ``vivace doctor``)."""
    try:
        nvml = ctypes.CDLL(lib)
    except OSError:
        return [], "no NVIDIA driver (libnvidia-ml.so.1 not found)"
    try:
        return _query(nvml), "NVML"
    except NvmlError as err:
        return [], f"NVML failed: {err}"


def _checker(nvml: Any) -> Any:
    def check(rc: int, what: str) -> None:
        if rc != 0:
            msg = f"error {rc}"
            with contextlib.suppress(Exception):
                nvml.nvmlErrorString.restype = ctypes.c_char_p
                msg = nvml.nvmlErrorString(rc).decode()
            raise NvmlError(f"{what}: {msg}")

    return check


class _Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


def sample(lib: str = NVML_LIB, nvml: Any = None) -> list[dict[str, Any]]:
    """Each GPU's utilization now (percent of the last sample period the GPU was busy) and memory in use,
    from NVML; [] where there is no driver or NVML fails (metrics only: never an error)."""
    try:
        nvml = nvml or ctypes.CDLL(lib)
    except OSError:
        return []
    check = _checker(nvml)
    try:
        check((getattr(nvml, "nvmlInit_v2", None) or nvml.nvmlInit)(), "nvmlInit")
    except NvmlError as err:
        log.debug("GPU sample: %s", err)
        return []
    out = []
    try:
        count = ctypes.c_uint()
        check(nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)), "nvmlDeviceGetCount")
        for i in range(count.value):
            handle = ctypes.c_void_p()
            check(nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)), f"device {i}")
            util = _Utilization()
            check(nvml.nvmlDeviceGetUtilizationRates(handle, ctypes.byref(util)), f"device {i} utilization")
            mem = _Memory()
            check(nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)), f"device {i} memory")
            out.append({"index": i, "utilization": min(100, int(util.gpu)),
                        "memory_used_mib": int(mem.used // (1 << 20)),
                        "memory_total_mib": int(mem.total // (1 << 20))})  # fmt: skip
    except NvmlError as err:
        log.debug("GPU sample: %s", err)
        return []
    finally:
        nvml.nvmlShutdown()
    return out


def _query(nvml: Any) -> list[Gpu]:
    check = _checker(nvml)
    init = getattr(nvml, "nvmlInit_v2", None) or nvml.nvmlInit
    check(init(), "nvmlInit")
    try:
        count = ctypes.c_uint()
        check(nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)), "nvmlDeviceGetCount")
        gpus = []
        for i in range(count.value):
            handle = ctypes.c_void_p()
            check(nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)), f"device {i}")
            name = ctypes.create_string_buffer(96)
            check(nvml.nvmlDeviceGetName(handle, name, 96), f"device {i} name")
            uuid = ctypes.create_string_buffer(96)
            check(nvml.nvmlDeviceGetUUID(handle, uuid, 96), f"device {i} uuid")
            mem = _Memory()
            check(nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)), f"device {i} memory")
            minor = ctypes.c_uint()
            check(nvml.nvmlDeviceGetMinorNumber(handle, ctypes.byref(minor)), f"device {i} minor number")
            mib = int(mem.total // (1 << 20))
            full = name.value.decode(errors="replace")
            gpus.append(Gpu(i, uuid.value.decode(), normalize_type(full, mib), mib, minor.value, full))
        return gpus
    finally:
        nvml.nvmlShutdown()


# -- what a container given GPUs needs ----------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    path: str
    major: int
    minor: int


def device_nodes(gpus: list[Gpu], dev: Path = Path("/dev")) -> list[Device]:
    """The assigned GPUs' nodes and the driver's control nodes that exist on this host."""
    found = []
    for name in [f"nvidia{g.minor}" for g in gpus] + list(CONTROL_DEVICES):
        path = dev / name
        try:
            st = os.stat(path)
        except OSError:
            if name.startswith("nvidia") and name[6:].isdigit():
                raise FileNotFoundError(f"GPU device node {path} is missing") from None
            continue
        if stat.S_ISCHR(st.st_mode):
            found.append(Device(f"/dev/{name}", os.major(st.st_rdev), os.minor(st.st_rdev)))
    return found


def driver_files() -> tuple[list[Path], list[Path]]:
    """The driver's user-space libraries (as ldconfig knows them) and tools on this host."""
    libs: list[Path] = []
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    seen: set[str] = set()
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) \((.*?)\) => (\S+)", line)
        if not m or not any(arch in m.group(2) for arch in ("x86-64", "64bit", "AArch64")):
            continue  # 32-bit copies are of no use to a 64-bit Python
        soname, target = m.group(1), m.group(3)
        if soname.startswith(DRIVER_LIBRARIES) and soname not in seen:
            seen.add(soname)
            libs.append(Path(target))
    tools = [Path(d, t) for t in DRIVER_TOOLS for d in ("/usr/bin", "/usr/local/bin") if Path(d, t).exists()]
    return libs, tools


def oci_gpu_config(
    gpus: list[Gpu], devices: list[Device], libs: list[Path], tools: list[Path]
) -> dict[str, Any]:
    """The pieces of an OCI config that give a container exactly ``gpus`` (pure: unit-tested).

    Returns ``{"env": {...}, "mounts": [...], "devices": [...], "device_rules": [...]}``."""
    uuids = ",".join(g.uuid for g in gpus)
    env = {
        "CUDA_VISIBLE_DEVICES": uuids,
        "NVIDIA_VISIBLE_DEVICES": uuids,
        "LD_LIBRARY_PATH": DRIVER_LIB_DIR,
    }
    mounts = []
    for lib in libs:
        real = lib.resolve()
        # the soname the loader asks for, backed by the real file (symlink chains are not followed inside)
        mounts.append(_ro_bind(real, f"{DRIVER_LIB_DIR}/{lib.name}"))
    for tool in tools:
        mounts.append(_ro_bind(tool.resolve(), f"{DRIVER_BIN_DIR}/{tool.name}"))
    return {
        "env": env,
        "mounts": mounts,
        "devices": [
            {
                "path": d.path,
                "type": "c",
                "major": d.major,
                "minor": d.minor,
                "fileMode": 0o666,
                "uid": 0,
                "gid": 0,
            }
            for d in devices
        ],
        "device_rules": [
            {"allow": True, "type": "c", "major": d.major, "minor": d.minor, "access": "rwm"} for d in devices
        ],
    }


def _ro_bind(source: Path, destination: str) -> dict[str, Any]:
    return {"destination": destination, "type": "bind", "source": str(source),
            "options": ["bind", "ro", "nosuid", "nodev"]}  # fmt: skip


def describe(gpus: list[Gpu]) -> str:
    if not gpus:
        return "none"
    return ", ".join(f"{g.index}: {g.type} ({g.memory_mib} MiB, {g.uuid})" for g in gpus)
