"""GPU passthrough without a GPU: a container given a (fake) GPU device node gets that node, and the
device cgroup lets it open it, while a node it was not given is absent; the driver's libraries arrive
read-only and CUDA_VISIBLE_DEVICES names exactly the assigned GPU. (The real thing, on a machine with
an NVIDIA GPU, is tests/gpu.)"""

import json
import os
import shutil
import subprocess
import uuid

import pytest

from vivace.worker import gpus, images
from vivace.worker.cgroups import ContainerCgroup, detect
from vivace.worker.runtimes.base import ContainerSpec, RuntimeContext
from vivace.worker.runtimes.oci import OciRuntime, mount_overlay, oci_config, unmount

pytestmark = pytest.mark.timeout(120)
FAKE_MAJOR = 195  # nvidia's character major; with no driver loaded, opening such a node fails ENXIO/ENODEV

PROBE = """
import errno, json, os
out = {"dev": sorted(n for n in os.listdir("/dev") if n.startswith("nvidia")), "env": os.environ.get("CUDA_VISIBLE_DEVICES")}
try:
    os.close(os.open("/dev/nvidia250", os.O_RDWR))
    out["open"] = "ok"
except OSError as err:
    out["open"] = errno.errorcode[err.errno]
out["lib"] = open("/usr/local/nvidia/lib64/libcuda.so.1").read()
try:
    open("/usr/local/nvidia/lib64/libcuda.so.1", "w")
    out["lib_writable"] = True
except OSError:
    out["lib_writable"] = False
print(json.dumps(out))
"""


@pytest.mark.parametrize("name", ["crun", "runc"])
def test_container_gets_exactly_its_gpu_device(name, tmp_path):
    if os.geteuid() != 0 or shutil.which(name) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} must be installed (as root) in CI: .ci/install-runtimes.sh")
        pytest.skip(f"{name} is not installed (or not root)")
    dev = tmp_path / "dev"
    dev.mkdir()
    os.mknod(dev / "nvidia250", 0o600 | 0o020000, os.makedev(FAKE_MAJOR, 250))  # the assigned GPU
    os.mknod(dev / "nvidia251", 0o600 | 0o020000, os.makedev(FAKE_MAJOR, 251))  # someone else's
    lib = tmp_path / "driver" / "libcuda.so.1"
    lib.parent.mkdir()
    lib.write_text("fake driver library")

    given = [gpus.Gpu(0, "GPU-fake-250", "FAKE", 1, minor=250)]
    piece = gpus.oci_gpu_config(given, gpus.device_nodes(given, dev), [lib], [])
    key = "gputest" + uuid.uuid4().hex[:6]
    runtime = OciRuntime(name, shutil.which(name), RuntimeContext(tmp_path, key))
    bundle = tmp_path / "bundle"
    for d in (bundle / "rootfs", tmp_path / "upper", tmp_path / "work", tmp_path / "sock"):
        d.mkdir(parents=True)
    base = images.base_rootfs(tmp_path / "images") / "rootfs"
    spec = ContainerSpec(key, tmp_path, tmp_path / "sock" / "s", None, gpus=given)
    config = oci_config(
        spec,
        cgroups_path=f"/vivace/{key}/c/ctr",
        runtime_bundle=images.runtime_bundle(tmp_path / "images"),
        netns=None,
        rlimit_nofile=1024,
        gpu=piece,
    )
    config["process"]["args"] = ["/usr/local/bin/python3", "-c", PROBE]
    (bundle / "config.json").write_text(json.dumps(config))
    runtime.state_root.mkdir(parents=True)
    mount_overlay([base], tmp_path / "upper", tmp_path / "work", bundle / "rootfs")
    try:
        proc = subprocess.run(
            [runtime.binary, *runtime.global_args, "run", "--bundle", str(bundle), key],
            capture_output=True, text=True, timeout=60, preexec_fn=runtime._preexec,
        )  # fmt: skip
    finally:
        unmount(bundle / "rootfs")
        ContainerCgroup(detect(), f"vivace/{key}").remove()
        shutil.rmtree(runtime.state_root.parent, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["dev"] == ["nvidia250"]  # the assigned node only: not nvidia251
    assert seen["open"] in ("ENXIO", "ENODEV"), seen  # allowed by the device cgroup (EPERM if denied)
    assert seen["env"] == "GPU-fake-250"
    assert seen["lib"] == "fake driver library" and seen["lib_writable"] is False
