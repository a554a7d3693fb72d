"""/metrics' exposition (checked by prometheus_client's own parser) and the worker's GPU sampler."""

from __future__ import annotations

import ctypes
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from vivace.server.services.metrics import Exposition, Histogram
from vivace.worker import gpus


def test_the_exposition_parses_as_prometheus_text_with_escaped_labels() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.5, 2.0):
        h.observe({"phase": "total"}, v)
    out = Exposition()
    out.family("vivace_queue_depth", "gauge", "Inputs waiting.")
    out.sample("vivace_queue_depth", {"app": 'we"ird\\app\nname', "function": "f"}, 3)
    out.histogram("vivace_cold_seconds", "Cold.", h)
    families = {f.name: f for f in text_string_to_metric_families(out.text())}
    (depth,) = families["vivace_queue_depth"].samples
    assert depth.labels == {"app": 'we"ird\\app\nname', "function": "f"} and depth.value == 3
    samples = {(s.name, s.labels.get("le")): s.value for s in families["vivace_cold_seconds"].samples}
    assert samples[("vivace_cold_seconds_bucket", "0.1")] == 1
    assert samples[("vivace_cold_seconds_bucket", "1.0")] == 2  # cumulative
    assert samples[("vivace_cold_seconds_bucket", "+Inf")] == 3
    assert samples[("vivace_cold_seconds_count", None)] == 3
    assert abs(samples[("vivace_cold_seconds_sum", None)] - 2.55) < 1e-9


class FakeNvml:
    """NVML's calls the sampler makes, answering for two GPUs (ctypes by-reference arguments filled in)."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on
        self.shut = False

    def nvmlInit_v2(self) -> int:
        return 0

    def nvmlShutdown(self) -> int:
        self.shut = True
        return 0

    def nvmlErrorString(self, rc: int) -> bytes:
        return b"Unknown Error"

    def nvmlDeviceGetCount_v2(self, ref: Any) -> int:
        ref._obj.value = 2
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, i: int, ref: Any) -> int:
        ref._obj.value = 1000 + i
        return 0

    def nvmlDeviceGetUtilizationRates(self, handle: Any, ref: Any) -> int:
        if self.fail_on == "utilization":
            return 999
        ref._obj.gpu = 87 if handle.value == 1000 else 3
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle: Any, ref: Any) -> int:
        ref._obj.total = 80 << 30
        ref._obj.used = (40 << 30) if handle.value == 1000 else 0
        return 0


def test_the_gpu_sampler_reads_utilization_and_memory_and_never_raises() -> None:
    fake = FakeNvml()
    got = gpus.sample(nvml=fake)
    assert got == [
        {"index": 0, "utilization": 87, "memory_used_mib": 40 << 10, "memory_total_mib": 80 << 10},
        {"index": 1, "utilization": 3, "memory_used_mib": 0, "memory_total_mib": 80 << 10},
    ]
    assert fake.shut
    broken = FakeNvml(fail_on="utilization")
    assert gpus.sample(nvml=broken) == [] and broken.shut
    assert gpus.sample(lib="libnot-there.so.1") == []
    assert ctypes  # by-reference arguments are ctypes objects


def test_the_otlp_endpoint_comes_from_the_standard_variables() -> None:
    import pytest

    from vivace.server.otlp import from_env

    assert from_env(env={}) is None
    c = from_env(
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://col:4318/", "OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=x%20y"}
    )
    assert c is not None and c.endpoint == "http://col:4318/v1/traces" and c.headers == {"a": "1", "b": "x y"}
    assert c.service == "vivace"
    c = from_env(env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t/x", "OTEL_SERVICE_NAME": "gpu-farm"})
    assert c is not None and (c.endpoint, c.service) == ("https://t/x", "gpu-farm")
    assert from_env(
        "http://flag:1/v1/traces", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env"}
    ).endpoint == (  # type: ignore[union-attr]
        "http://flag:1/v1/traces"
    )
    with pytest.raises(ValueError, match="http:// or https://"):
        from_env("grpc://col:4317", env={})
