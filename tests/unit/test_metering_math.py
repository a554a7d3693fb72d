"""Metering's pure parts: price tables, the pools file, a container's meter, cgroup accounting, the
worker's start/exit reports, and the CLI's times."""

from __future__ import annotations

import asyncio
import calendar
import json
import math
from pathlib import Path
from typing import Any

import click
import pytest

from vivace import exception as exc
from vivace.cli.times import parse_when
from vivace.server.services.metering import (
    PriceError,
    Prices,
    load_pools,
    meter_row,
    parse_prices,
    period_start,
)
from vivace.worker.cgroups import CgroupHost, ContainerCgroup
from vivace.worker.events import EventReporter

# -- prices -----------------------------------------------------------------------------------------


def test_a_pools_file_gives_each_pool_its_prices(tmp_path: Path) -> None:
    f = tmp_path / "pools.toml"
    f.write_text(
        "[pools.default]\ncpu_core_second = 0.0000131\nmemory_gib_second = 0.00000222\n"
        "[pools.gpu]\ncpu_core_second = 0.00002\n[pools.gpu.gpu_second]\nh100 = 0.001097\nA100-80GB = 0.000694\n"
    )
    pools = load_pools(f)
    assert pools["default"] == Prices(0.0000131, 0.00000222, {})
    assert pools["gpu"].gpu_second == {"H100": 0.001097, "A100-80GB": 0.000694}  # types upper-cased
    # a reservation's rate: 2 cores, 4 GiB and two H100s
    rates = pools["gpu"].rates(2.0, 4096, "H100", 2)
    assert rates == pytest.approx({"cpu": 0.00004, "memory": 0.0, "gpu": 0.002194})
    assert pools["gpu"].rates(1.0, 1024, None, 0)["gpu"] == 0.0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[pools.default]\ncpu_core_second = -1\n", "between 0 and"),
        ("[pools.default]\ncpu_core_second = 'cheap'\n", "must be a number"),
        ("[pools.default]\ncpu_core_second = true\n", "must be a number"),
        ("[pools.default]\ncpu_core_second = nan\n", "between 0 and"),
        ("[pools.default]\ncpu_per_hour = 1\n", "unknown key(s) cpu_per_hour"),
        ("[pools.default.gpu_second]\n'H 100' = 1\n", "not a GPU type name"),
        ("[pools.default]\ngpu_second = 3\n", "table of GPU type"),
        ("[pools.Default]\ncpu_core_second = 1\n", "pool name 'Default'"),
        ("[pool.default]\n", "unknown top-level key(s) pool"),
        ("pools = 3\n", "'pools' must be a table"),
        ("[pools.default\n", "not valid TOML"),
    ],
)
def test_a_bad_pools_file_says_where_and_why(tmp_path: Path, text: str, says: str) -> None:
    f = tmp_path / "pools.toml"
    f.write_text(text)
    with pytest.raises(PriceError) as err:
        load_pools(f)
    assert says in str(err.value)


def test_a_missing_pools_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PriceError, match="cannot read the pools file"):
        load_pools(tmp_path / "nope.toml")


def test_prices_round_trip_through_json() -> None:
    p = Prices(0.5, 0.25, {"L4": 0.1})
    assert parse_prices(json.loads(json.dumps(p.to_json())), "x") == p


# -- a container's meter ------------------------------------------------------------------------------

PRICES = json.dumps(Prices(cpu_core_second=1.0).to_json())


def row(started: float | None, ready: float | None, stopped: float | None, busy: float = 0.0,
        busy_since: float | None = None, cpu: float = 1.0) -> tuple[Any, ...]:  # fmt: skip
    return ("ct-1", "ap-1", "app", "f", "default", None, 0, cpu, 1024, started, ready, stopped, busy, busy_since,
            PRICES)  # fmt: skip


def test_a_meter_splits_billed_time_and_costs_what_was_reserved() -> None:
    m = meter_row(row(100.0, 104.0, 200.0, busy=60.0, cpu=2.0), now=500.0)
    assert m is not None
    assert (m.billed_s, m.cold_s, m.busy_s, m.idle_s) == (100.0, 4.0, 60.0, 36.0)
    assert m.total == pytest.approx(200.0)  # 100 s of 2 cores at 1 per core-second


def test_a_running_containers_meter_runs_to_now_with_its_open_busy_stretch() -> None:
    m = meter_row(row(100.0, 101.0, None, busy=10.0, busy_since=150.0), now=160.0)
    assert m is not None
    assert (m.billed_s, m.cold_s, m.busy_s, m.idle_s) == (60.0, 1.0, 20.0, 39.0)


def test_a_container_still_starting_is_all_cold_start() -> None:
    m = meter_row(row(100.0, None, None), now=130.0)
    assert m is not None and (m.billed_s, m.cold_s, m.busy_s, m.idle_s) == (30.0, 30.0, 0.0, 0.0)


def test_a_window_clips_the_meter_exactly_and_shares_busy_time_out() -> None:
    # life 100..300: cold 100..120, then 180 s warm of which 90 busy
    r = row(100.0, 120.0, 300.0, busy=90.0)
    m = meter_row(r, now=1000.0, since=110.0, until=210.0)
    assert m is not None
    assert m.billed_s == 100.0 and m.cold_s == 10.0
    assert m.busy_s == pytest.approx(45.0) and m.idle_s == pytest.approx(45.0)  # half the warm part
    assert meter_row(r, now=1000.0, since=300.5) is None  # after it stopped
    assert meter_row(r, now=1000.0, until=99.0) is None  # before it started
    assert meter_row(row(None, None, None), now=1000.0) is None  # never up: nothing billed


def test_periods_start_at_utc_midnight_and_the_first_of_the_month() -> None:
    now = float(calendar.timegm((2026, 11, 25, 15, 30, 0)))
    assert period_start("day", now) == calendar.timegm((2026, 11, 25, 0, 0, 0))
    assert period_start("month", now) == calendar.timegm((2026, 11, 1, 0, 0, 0))
    assert period_start("total", now) == 0.0


# -- cgroup accounting ---------------------------------------------------------------------------------


def test_cgroup_v2_usage_reads_cpu_stat_and_memory_peak(tmp_path: Path) -> None:
    d = tmp_path / "vivace" / "k" / "ct-1"
    d.mkdir(parents=True)
    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (d / "memory.peak").write_text("104857600\n")
    cg = ContainerCgroup(CgroupHost("v2", {"": tmp_path}), "vivace/k/ct-1")
    assert cg.usage() == (2.5, 104857600)


def test_cgroup_v1_usage_finds_cpuacct_in_its_own_hierarchy(tmp_path: Path) -> None:
    mounts = {c: tmp_path / c for c in ("memory", "cpu", "pids")}
    acct = tmp_path / "cpuacct"
    (acct / "vivace/k/ct-1/ctr").mkdir(parents=True)  # the OCI runtime made only the child there
    (acct / "vivace/k/ct-1/ctr/cpuacct.usage").write_text("1500000000\n")
    (mounts["memory"] / "vivace/k/ct-1").mkdir(parents=True)
    (mounts["memory"] / "vivace/k/ct-1/memory.max_usage_in_bytes").write_text("2048\n")
    host = CgroupHost("v1", mounts, others=(acct,))
    assert ContainerCgroup(host, "vivace/k/ct-1").usage() == (1.5, 2048)
    assert ContainerCgroup(host, "vivace/k/ct-2").usage() == (None, None)  # nothing there: not measured


# -- the worker's reports -----------------------------------------------------------------------------


class FlakyApi:
    """Refuses the first ``fail`` posts as unreachable, then records what it gets."""

    def __init__(self, fail: int, refuse: set[str] | None = None) -> None:
        self.fail = fail
        self.refuse = refuse or set()
        self.got: list[dict[str, Any]] = []

    async def post_json(self, path: str, body: Any, **kw: Any) -> Any:
        # one try per body: the client's own retries would resend an "ago" grown stale meanwhile
        assert kw.get("retry_for") == 0
        ev = body["events"][0]
        if self.fail > 0:
            self.fail -= 1
            raise exc.ServiceError("cannot reach the vivace server")
        if ev["container_id"] in self.refuse:
            raise exc.NotFoundError(f"container {ev['container_id']} does not exist")
        self.got.append({"path": path, **ev})


async def _deliver(api: FlakyApi, reports: list[tuple[str, str, float]]) -> None:
    r = EventReporter(api, lambda: "wk-1")  # type: ignore[arg-type]
    task = asyncio.create_task(r.run())
    import time

    now = time.monotonic()
    for cid, event, ago in reports:
        r.report(cid, event, at=now - ago, exit_code=0 if event == "exited" else None)
    assert await r.flush(10.0)
    task.cancel()


def test_reports_are_retried_in_order_and_dated_at_each_try() -> None:
    api = FlakyApi(fail=3)
    asyncio.run(_deliver(api, [("ct-1", "started", 5.0), ("ct-1", "exited", 1.0)]))
    assert [(e["container_id"], e["event"]) for e in api.got] == [("ct-1", "started"), ("ct-1", "exited")]
    # three failed tries took time (0.2 + 0.4 + 0.8 s of backoff): the report still says when it happened
    first = api.got[0]
    assert first["ago"] >= 5.0 + 1.4 and first["path"] == "/v1/workers/wk-1/events"
    assert "exit_code" not in first and api.got[1]["exit_code"] == 0


def test_a_report_the_control_plane_refuses_for_good_is_dropped() -> None:
    api = FlakyApi(fail=0, refuse={"ct-gone"})
    asyncio.run(_deliver(api, [("ct-gone", "exited", 0.0), ("ct-2", "started", 0.0)]))
    assert [e["container_id"] for e in api.got] == ["ct-2"]


# -- the CLI's times ------------------------------------------------------------------------------------


def test_usage_times_parse_durations_dates_and_period_starts() -> None:
    now = float(calendar.timegm((2026, 11, 25, 15, 30, 0)))
    assert parse_when("7d", now) == now - 7 * 86400
    assert parse_when("90m", now) == now - 5400
    assert parse_when("today", now) == calendar.timegm((2026, 11, 25, 0, 0, 0))
    assert parse_when("month", now) == calendar.timegm((2026, 11, 1, 0, 0, 0))
    assert parse_when("2026-11-02", now) == calendar.timegm((2026, 11, 2, 0, 0, 0))
    assert parse_when("2026-11-02T06:30", now) == calendar.timegm((2026, 11, 2, 6, 30, 0))
    assert parse_when("1700000000", now) == 1700000000.0
    with pytest.raises(click.BadParameter, match="duration ago"):
        parse_when("last tuesday", now)
    assert math.isfinite(parse_when("1w", now))


def test_durations_for_retention_parse_units_and_refuse_nonsense() -> None:
    from vivace.cli.times import parse_duration

    assert parse_duration("30d", "--x") == 30 * 86400
    assert parse_duration("12h", "--x") == 43200 and parse_duration("90", "--x") == 90.0
    assert parse_duration("0", "--x") == 0.0
    for bad in ("-1", "forever", "1y", "nan"):
        with pytest.raises(click.BadParameter, match="not a duration"):
            parse_duration(bad, "--x")


def test_the_example_pools_file_is_valid() -> None:
    pools = load_pools(Path(__file__).parents[2] / "examples" / "pools.toml")
    assert set(pools) == {"default", "gpu-rack"} and pools["gpu-rack"].gpu_second["H100"] > 0
