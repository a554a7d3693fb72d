"""Metering through the real control plane, worker and containers (ADR 0015): a container's billed
life matches the kernel's record of its process, calls carry their cost, `vivace usage` shows it, and
a reached spend limit starts no container and says why."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.conftest import run_cli
from tests.kernel_clock import process_start, wait_exit

import vivace
from vivace import exception as exc
from vivace.server.services import metering
from vivace.server.services.metering import Prices

pytestmark = pytest.mark.timeout(120)
APPS = Path(__file__).parent / "apps"
PRICES = Prices(cpu_core_second=0.002, memory_gib_second=0.0004)


@pytest.fixture(scope="module")
def priced(cluster: Any) -> Iterator[Prices]:
    """The worker's pool (default) has prices while these tests run."""
    cluster.plane.store.write_sync(lambda tx: metering.set_pools(tx, {"default": PRICES}))
    yield PRICES
    cluster.plane.store.write_sync(lambda tx: metering.set_pools(tx, {"default": Prices()}))


@pytest.fixture(scope="module")
def metered(app_loader: Any, priced: Prices) -> Iterator[Any]:
    module = app_loader("metered")
    with module.app.run():
        yield module


def _stopped_meter(user_http: httpx.Client, cid: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = user_http.get(f"/v1/containers/{cid}").json()
        if info["state"] == "stopped":
            return info
        assert time.monotonic() < deadline, f"container {cid} did not stop: {info}"
        time.sleep(0.1)


def test_a_containers_billed_life_matches_the_kernels_record(metered: Any, user_http: httpx.Client) -> None:
    pid, cid, burned = metered.burn.remote(0.3)
    start = process_start(pid)  # the kernel's record of the container's process (process runtime)
    exited = wait_exit(pid, 30)  # it stops 2 s after its last input (scaledown_window)
    info = _stopped_meter(user_http, cid)
    m = info["meter"]
    real = exited - start
    assert abs(m["billed_s"] - real) < 1.0, (m, real)
    assert abs(m["phases"]["started_at"] - start) < 1.0 and abs(m["phases"]["stopped_at"] - exited) < 1.0
    # its phases in order, and its billed time split without a gap or an overlap
    p = m["phases"]
    assert p["created_at"] <= p["assigned_at"] <= p["image_ready_at"] <= p["started_at"] <= p["ready_at"]
    assert p["ready_at"] <= p["stopped_at"]
    assert m["cold_s"] > 0 and m["busy_s"] >= burned * 0.9
    assert m["cold_s"] + m["busy_s"] + m["idle_s"] == pytest.approx(m["billed_s"])
    # its cost: what it reserved (0.5 cores, 256 MiB) for as long as it was billed, at the pool's prices
    rate = 0.5 * PRICES.cpu_core_second + 0.25 * PRICES.memory_gib_second
    assert (m["pool"], m["rate_per_s"]) == ("default", pytest.approx(rate))
    assert m["cost"] == pytest.approx(m["billed_s"] * rate)
    assert m["reserved"] == {"cpu": 0.5, "memory_mib": 256}
    shown = run_cli("container", "show", cid).stdout
    assert (
        f"billed       {m['billed_s']:.1f} s (cold" in shown and "CPU used not measured" in shown
    )  # process
    assert "0.5 cores, 256 MiB in pool default" in shown and "image_ready" in shown


def test_each_call_shows_its_run_time_and_cost(metered: Any, user_http: httpx.Client) -> None:
    call = metered.nap.spawn(0.4)
    cid = call.get(timeout=60)
    got = user_http.get(f"/v1/calls/{call.object_id}/usage").json()
    rate = (
        0.125 * PRICES.cpu_core_second + 0.125 * PRICES.memory_gib_second
    )  # the default 0.125 cores, 128 MiB
    assert got["function"] == "nap" and got["app"] == "metered" and got["inputs"] == {"done": 1}
    assert 0.4 <= got["busy_s"] < 5.0
    assert got["cost"] == pytest.approx(got["busy_s"] * rate)
    assert user_http.get("/v1/calls/fc-nope/usage").status_code == 404
    assert cid
    out = run_cli("usage", "call", call.object_id).stdout
    assert f"Call {call.object_id} of metered.nap" in out and "1 done" in out


def test_vivace_usage_shows_cost_by_app_function_and_day(metered: Any, user_http: httpx.Client) -> None:
    cid = metered.nap.remote(0.1)
    _stopped_meter(user_http, cid)
    res = user_http.get("/v1/usage", params={"by": "function,day", "app": "metered", "since": 0}).json()
    rows = {r["function"]: r for r in res["rows"]}
    assert "metered.nap" in rows and rows["metered.nap"]["billed_s"] > 0
    assert res["total"]["cost"] == pytest.approx(sum(r["cost"] for r in res["rows"]))
    assert rows["metered.nap"]["day"] == time.strftime("%Y-%m-%d", time.gmtime())
    # the CLI: a table by default, the same answer with --json
    table = run_cli("usage", "--app", "metered", "--by", "function", "--since", "1d").stdout
    assert "metered.nap" in table and "total" in table
    js = json.loads(run_cli("usage", "--app", "metered", "--by", "gpu", "--json", "--since", "1d").stdout)
    assert [r["gpu"] for r in js["rows"]] == ["none"] and js["total"]["cost"] > 0
    pools = user_http.get("/v1/pools").json()["pools"]
    assert any(p["name"] == "default" and p["prices"]["cpu_core_second"] == 0.002 for p in pools)
    assert "default" in run_cli("pool", "list").stdout
    # bad input: a clear error, not a 500
    for params in ({"by": "colour"}, {"by": "app,app"}, {"since": "yesterday"}, {"since": 10, "until": 5}):
        r = user_http.get("/v1/usage", params=params)
        assert r.status_code == 422, (params, r.text)
    bad = run_cli("usage", "--by", "colour", ok=False)
    assert "choose among" in bad.stderr


def test_a_reached_spend_limit_starts_no_container_and_says_why(
    app_loader: Any, user_http: httpx.Client
) -> None:
    module = app_loader("metered")
    assert (
        "Spend limit of app metered-limited"
        in run_cli("usage", "limit", "set", "0", "--app", "metered-limited").stdout
    )
    try:
        with module.limited.run():
            with pytest.raises(exc.ResourceExhaustedError, match="reached its spend limit") as err:
                module.work.remote(1)
            assert "metered-limited" in str(err.value)
            listed = run_cli("usage", "limits").stdout
            assert "metered-limited" in listed and "REACHED" in listed
            # raised: it runs again
            run_cli("usage", "limit", "set", "1000", "--app", "metered-limited")
            assert module.work.remote(4) == 8
    finally:
        run_cli("usage", "limit", "remove", "--app", "metered-limited")
    assert "metered-limited" not in run_cli("usage", "limits").stdout
    missing = run_cli("usage", "limit", "remove", "--app", "metered-limited", ok=False)
    assert "has no spend limit" in missing.stderr
    for body in (
        {"amount": -1},
        {"amount": "ten"},
        {"amount": 5, "period": "week"},
        {"amount": 5, "app": ""},
    ):
        assert user_http.put("/v1/spend-limits", json=body).status_code == 422, body


def test_a_worker_pool_name_is_checked() -> None:
    bad = run_cli(
        "worker", "--server", "http://127.0.0.1:1", "--token", "a:b", "--pool", "Not A Pool", ok=False
    )
    assert "--pool" in bad.stderr and "lowercase" in bad.stderr
    assert vivace  # the SDK is what the app fixtures run


def test_metrics_are_scraped_in_prometheus_format_with_a_bearer_token(
    cluster: Any, metered: Any, user_http: httpx.Client
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[str, Any]:
        # what a Prometheus scrape sends: the bearer token, no vivace version header
        r = httpx.get(f"{cluster.url}/metrics", headers={"authorization": f"Bearer {cluster.user_token}"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return {f.name: f for f in text_string_to_metric_families(r.text)}

    def count(fams: dict[str, Any], family: str, sample: str, **labels: str) -> float:
        return sum(
            s.value for s in fams[family].samples if s.name == sample and labels.items() <= s.labels.items()
        )

    before = scrape()
    metered.nap.remote(0.05)
    after = scrape()
    ran = "vivace_input_duration_seconds_count"
    assert count(after, "vivace_input_duration_seconds", ran, function="nap") == (
        count(before, "vivace_input_duration_seconds", ran, function="nap") + 1
    )
    assert (
        count(
            after, "vivace_inputs_finished", "vivace_inputs_finished_total", function="nap", status="success"
        )
        >= 1
    )
    assert {s.labels["phase"] for s in after["vivace_container_cold_start_seconds"].samples} >= {
        "total",
        "enter",
    }
    assert any(s.value == 2.0 for s in after["vivace_worker_cpu_cores"].samples)  # the test worker's 2 cores
    assert any(s.labels["app"] == "metered" for s in after["vivace_spend_month"].samples)
    assert httpx.get(f"{cluster.url}/metrics").status_code == 401
    assert (
        httpx.get(f"{cluster.url}/metrics", headers={"authorization": "Bearer tk-x:nope"}).status_code == 401
    )
