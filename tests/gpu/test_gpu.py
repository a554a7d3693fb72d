"""On a machine with NVIDIA GPUs: the worker reports them through NVML, and a container gets exactly the
GPU it was assigned (its device node, the driver's tools, CUDA_VISIBLE_DEVICES). Run with
``scripts/test -m gpu`` on such a machine; without one these tests fail (they never skip quietly)."""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import sdk_pointed_at
from vivace._version import __version__
from vivace.testing.cluster import LocalCluster
from vivace.worker import gpus

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def machine_gpus():
    found, how = gpus.discover()
    assert found, f"no GPU found through NVML ({how}): the gpu tests need an NVIDIA GPU and driver"
    assert os.geteuid() == 0 and shutil.which("crun"), "the gpu tests run containers with crun, as root"
    return found


@pytest.fixture(scope="module")
def gpu_cluster(machine_gpus, tmp_path_factory):
    home = tmp_path_factory.mktemp("gpu")
    with LocalCluster(home, runtimes=["crun"]) as cluster, sdk_pointed_at(cluster):
        spec = importlib.util.spec_from_file_location("gpuapp", Path(__file__).parent / "apps" / "gpuapp.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpuapp"] = module
        spec.loader.exec_module(module)
        with module.app.run():
            module.cluster = cluster
            yield module


def test_worker_registers_its_gpus(gpu_cluster, machine_gpus):
    c = gpu_cluster.cluster
    headers = {"authorization": f"Bearer {c.user_token}", "x-vivace-version": __version__}
    res = httpx.get(f"{c.url}/v1/workers", headers=headers, timeout=10)
    res.raise_for_status()
    (worker,) = res.json()["workers"]
    assert sorted(g["uuid"] for g in worker["gpus"]) == sorted(g.uuid for g in machine_gpus)
    types = {g["uuid"]: g["type"] for g in worker["gpus"]}
    assert all(types[m.uuid] == gpus.normalize_type(m.name, m.memory_mib) for m in machine_gpus)


def test_a_container_sees_exactly_its_gpu(gpu_cluster, machine_gpus):
    seen = gpu_cluster.one_gpu.remote()
    by_uuid = {g.uuid: g for g in machine_gpus}
    assert seen["cuda_visible"] in by_uuid, seen
    assert seen["nodes"] == [f"nvidia{by_uuid[seen['cuda_visible']].minor}"], seen
    assert seen["smi_rc"] == 0 and len(seen["smi"]) == 1 and seen["cuda_visible"] in seen["smi"][0], seen


def test_a_container_without_gpus_sees_none(gpu_cluster):
    seen = gpu_cluster.no_gpu.remote()
    assert seen == {"cuda_visible": None, "nodes": []}
