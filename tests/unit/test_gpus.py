"""GPU discovery through NVML (over a fake NVML library object) and the OCI pieces a GPU container gets."""

import ctypes
from pathlib import Path

import pytest

from vivace.worker import gpus
from vivace.worker.runtimes.base import ContainerSpec
from vivace.worker.runtimes.oci import oci_config


@pytest.mark.parametrize(
    ("name", "mib", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", 81559, "H100"),
        ("NVIDIA H100 PCIe", 81559, "H100"),
        ("NVIDIA H200", 143771, "H200"),
        ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", 40960, "A100-40GB"),
        ("NVIDIA A100-PCIE-40GB", 0, "A100-40GB"),
        ("NVIDIA A10G", 23028, "A10G"),
        ("NVIDIA A10", 23028, "A10"),
        ("Tesla T4", 15360, "T4"),
        ("NVIDIA L4", 23034, "L4"),
        ("NVIDIA L40S", 46068, "L40S"),
        ("NVIDIA B200", 183359, "B200"),
        ("NVIDIA GeForce RTX 4090", 24564, "RTX-4090"),
        ("NVIDIA RTX A6000", 49140, "RTX-A6000"),
        ("NVIDIA Graphics Device (rev 2)", 1, "GRAPHICS-DEVICE-REV-2"),
    ],
)
def test_normalize_type(name, mib, expected):
    assert gpus.normalize_type(name, mib) == expected


class FakeNvml:
    """Stands in for libnvidia-ml: fills the out-parameters NVML's C API fills."""

    def __init__(self, devices, fail_on=None):
        self.devices = devices  # (name, uuid, total bytes, minor)
        self.fail_on = fail_on
        self.shutdown = False
        self.nvmlErrorString = lambda rc: b"Driver Not Loaded"

    def _rc(self, what):
        return 9 if what == self.fail_on else 0

    def nvmlInit_v2(self):
        return self._rc("init")

    def nvmlShutdown(self):
        self.shutdown = True
        return 0

    def nvmlDeviceGetCount_v2(self, ref):
        ref._obj.value = len(self.devices)
        return self._rc("count")

    def nvmlDeviceGetHandleByIndex_v2(self, i, ref):
        ref._obj.value = i + 1
        return 0

    def _dev(self, handle):
        return self.devices[handle.value - 1]

    def nvmlDeviceGetName(self, handle, buf, size):
        buf.value = self._dev(handle)[0].encode()
        return 0

    def nvmlDeviceGetUUID(self, handle, buf, size):
        buf.value = self._dev(handle)[1].encode()
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle, ref):
        ref._obj.total = self._dev(handle)[2]
        return 0

    def nvmlDeviceGetMinorNumber(self, handle, ref):
        ref._obj.value = self._dev(handle)[3]
        return 0


def test_query_reports_each_gpu_with_its_type_memory_and_device_minor():
    nvml = FakeNvml(
        [("NVIDIA H100 80GB HBM3", "GPU-aaa", 80 << 30, 3), ("NVIDIA H100 80GB HBM3", "GPU-bbb", 80 << 30, 1)]
    )
    found = gpus._query(nvml)
    assert [(g.index, g.uuid, g.type, g.memory_mib, g.minor) for g in found] == [
        (0, "GPU-aaa", "H100", 81920, 3),
        (1, "GPU-bbb", "H100", 81920, 1),
    ]
    assert found[0].registration() == {"index": 0, "uuid": "GPU-aaa", "type": "H100", "memory_mib": 81920}
    assert nvml.shutdown


def test_nvml_errors_are_reported_not_raised():
    nvml = FakeNvml([], fail_on="init")
    with pytest.raises(gpus.NvmlError, match="Driver Not Loaded"):
        gpus._query(nvml)


def test_discover_without_a_driver_finds_none():
    found, how = gpus.discover("libnvidia-ml-does-not-exist.so.1")
    assert found == [] and "no NVIDIA driver" in how


def test_device_nodes_need_every_assigned_gpu(tmp_path):
    g = gpus.Gpu(0, "GPU-a", "H100", 1, minor=7)
    with pytest.raises(FileNotFoundError, match="nvidia7"):
        gpus.device_nodes([g], tmp_path)
    (tmp_path / "nvidiactl").write_text("")  # not a character device: ignored
    with pytest.raises(FileNotFoundError):
        gpus.device_nodes([g], tmp_path)


def test_oci_config_gives_exactly_the_assigned_gpus():
    given = [gpus.Gpu(0, "GPU-a", "H100", 1, minor=2), gpus.Gpu(1, "GPU-b", "H100", 1, minor=5)]
    devices = [
        gpus.Device("/dev/nvidia2", 195, 2),
        gpus.Device("/dev/nvidia5", 195, 5),
        gpus.Device("/dev/nvidiactl", 195, 255),
    ]
    piece = gpus.oci_gpu_config(
        given, devices, [Path("/usr/lib/x86_64-linux-gnu/libcuda.so.1")], [Path("/usr/bin/nvidia-smi")]
    )
    spec = ContainerSpec(
        container_id="ta-1", workdir=Path("/w"), socket_path=Path("/w/sock/s"), source_dir=None, gpus=given
    )
    cfg = oci_config(
        spec, cgroups_path="/x", runtime_bundle=Path("/rt"), netns=None, rlimit_nofile=1024, gpu=piece
    )
    env = dict(e.split("=", 1) for e in cfg["process"]["env"])
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b" == env["NVIDIA_VISIBLE_DEVICES"]
    assert env["PATH"].endswith(":" + gpus.DRIVER_BIN_DIR) and env["LD_LIBRARY_PATH"] == gpus.DRIVER_LIB_DIR
    assert [d["path"] for d in cfg["linux"]["devices"]] == ["/dev/nvidia2", "/dev/nvidia5", "/dev/nvidiactl"]
    rules = cfg["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}  # everything else stays denied
    assert {(r["major"], r["minor"]) for r in rules[1:]} == {(195, 2), (195, 5), (195, 255)}
    dests = {m["destination"]: m for m in cfg["mounts"]}
    assert "ro" in dests[gpus.DRIVER_LIB_DIR + "/libcuda.so.1"]["options"]
    assert gpus.DRIVER_BIN_DIR + "/nvidia-smi" in dests
    # without GPUs: no devices, no rules, no driver files, no CUDA variables
    plain = oci_config(spec, cgroups_path="/x", runtime_bundle=Path("/rt"), netns=None, rlimit_nofile=1024)
    assert "devices" not in plain["linux"] and "resources" not in plain["linux"]
    assert not any(e.startswith("CUDA_VISIBLE_DEVICES=") for e in plain["process"]["env"])


def test_fake_nvml_matches_the_ctypes_calls():
    # the fake relies on byref()._obj being the object passed: guard that assumption
    x = ctypes.c_uint()
    assert ctypes.byref(x)._obj is x
