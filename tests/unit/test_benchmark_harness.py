"""The benchmark harness's own logic: summaries, the run-to-run check, merging, the docs page, and a
tiny smoke run of the command itself (the floor peer only). No timing is asserted anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchmarks import autoscale, cli, repro, scale, volumes
from benchmarks.report import render_markdown
from benchmarks.stats import latency_summary, ramp_summary

REPO = Path(__file__).resolve().parents[2]


def test_ramp_counts_each_worker_from_its_first_input() -> None:
    starts = [("a", 10.5, 11.5), ("b", 11.0, 12.0), ("a", 11.5, 12.5), ("c", 12.0, 13.0)]
    r = ramp_summary(10.0, starts, target=2)
    assert r["workers"] == 3 and r["inputs"] == 4
    assert r["first_start_s"] == pytest.approx(0.5)
    assert r["to_target_s"] == pytest.approx(1.0)  # b, the second worker, started at 11.0
    assert r["makespan_s"] == pytest.approx(3.0)
    assert r["curve"] == [[0.5, 1], [1.0, 2], [2.0, 3]]
    # a ends at 11.5 as its next input starts: never three at once (intervals are half-open)
    assert r["max_concurrent"] == 2
    assert r["running"][0] == [0.5, 1] and r["running"][-1] == [3.0, 0]


def test_a_ramp_that_never_reaches_its_target_says_so() -> None:
    r = ramp_summary(0.0, [("a", 1.0, 2.0)], target=20)
    assert r["to_target_s"] is None and r["workers"] == 1
    with pytest.raises(ValueError):
        ramp_summary(0.0, [], target=1)


def test_autoscale_summary_takes_medians_and_refuses_one_when_a_burst_fell_short() -> None:
    def run(to_target: float | None, makespan: float) -> dict[str, Any]:
        return {
            "first_start_s": 0.1,
            "to_target_s": to_target,
            "makespan_s": makespan,
            "max_concurrent": 20,
            "workers": 20,
            "target": 20,
            "curve": [[0.1, 1]],
        }

    ok = autoscale._summarise({"status": "ok", "runs": [run(1.0, 11), run(3.0, 13), run(2.0, 12)]})
    assert ok["to_target_s"] == 2.0 and (ok["to_target_s_min"], ok["to_target_s_max"]) == (1.0, 3.0)
    assert ok["makespan_s"] == 12
    short = autoscale._summarise({"status": "ok", "runs": [run(1.0, 11), run(None, 30)]})
    assert short["to_target_s"] is None and short["to_target_s_min"] == 1.0
    assert autoscale._summarise({"status": "not installed"}) == {"status": "not installed"}


def _results(p50: float, per_s: float, cpu_model: str = "cpu", mode: str = "quick") -> dict[str, Any]:
    samples = [p50 / 1000] * 9 + [2 * p50 / 1000]
    return {
        "schema": 1,
        "machine": {
            "cpu_model": cpu_model,
            "cpu_count": 2,
            "memory_gib": 4,
            "python": "3.11",
            "platform": "linux",
            "timestamp": "t",
        },
        "config": {
            "mode": mode,
            "workers": 2,
            "calls": 10,
            "warmup_calls": 1,
            "inputs": 100,
            "warmup_inputs": 10,
            "repetitions": 2,
        },
        "benchmarks": ["latency", "throughput"],
        "versions": {},
        "peers": {
            "multiprocessing": {
                "status": "ok",
                "version": "3.11",
                "benchmarks": {
                    "latency": latency_summary(samples),
                    "throughput": {
                        "median_per_s": per_s,
                        "min_per_s": per_s * 0.9,
                        "max_per_s": per_s * 1.1,
                        "spread_pct": 20.0,
                        "repetitions": 2,
                        "inputs": 100,
                    },
                },
            }
        },
    }


def test_run_to_run_check_compares_medians_against_the_reported_noise() -> None:
    before = _results(p50=1.0, per_s=1000)
    steady = repro.compare(before, _results(p50=1.0, per_s=1050))
    assert steady["compared"] and all(r["within_noise"] for r in steady["rows"])
    moved = repro.compare(before, _results(p50=1.0, per_s=2000))
    (thr,) = [r for r in moved["rows"] if r["figure"].startswith("throughput")]
    assert thr["within_noise"] is False and thr["change"] == pytest.approx(1.0)
    assert not repro.compare(before, _results(1.0, 1000, cpu_model="other"))["compared"]
    assert not repro.compare(before, _results(1.0, 1000, mode="full"))["compared"]
    page = "\n".join(repro.render(moved))
    assert "**no**" in page and "1 of 2 figures" in page


def test_merge_keeps_what_this_run_did_not_measure() -> None:
    previous = {**_results(1.0, 1000), "scale": {"inputs": 10, "per_s": 5.0}, "coldstart": {"crun": {}}}
    now = {**_results(2.0, 500), "wall_s": 3.0}
    merged = cli._merge(previous, now, ran_calls=False, ran=["coldstart"])
    assert merged["peers"] == previous["peers"] and merged["scale"] == previous["scale"]
    assert "coldstart" not in merged  # this run's replaces it
    assert merged["wall_s"] == 3.0  # the previous run recorded no time
    assert cli._merge(previous, now, ran_calls=True, ran=[])["peers"] == now["peers"]


def test_the_page_renders_every_section_and_says_why_a_peer_has_no_figures() -> None:
    results = _results(1.0, 1000)
    results["autoscale"] = {
        "inputs": 200,
        "max_containers": 20,
        "cpu": 0.05,
        "repetitions": 1,
        "peers": {
            "vivace": autoscale._summarise(
                {
                    "status": "ok",
                    "version": "0.1",
                    "runs": [ramp_summary(0.0, [(f"c{i}", 0.1 * i, 0.1 * i + 1) for i in range(20)], 20)],
                }
            ),
            "ray-data": {"status": "not installed", "error": "ray.data needs ray[data]"},
        },
    }
    results["scale"] = {
        "inputs": 1000,
        "status": "ok",
        "spawn_map_s": 0.5,
        "per_s": 2000.0,
        "queued": 1000,
        "server_rss_start_mib": 40,
        "server_rss_mib": 41,
        "server_peak_rss_mib": 42,
        "store_bytes": 300_000,
        "app_stop_s": 0.1,
    }
    ops = {op: 100.0 for op in ("dict_put", "dict_get", "queue_put", "queue_get")}
    spread = {f"{op}_{end}": 100.0 for op in ops for end in ("min", "max")}
    results["storage"] = {
        "n": 10,
        "repetitions": 1,
        "peers": {
            "vivace-client": {"status": "ok", "version": "0.1", "runs": [ops], **ops, **spread},
            "redis": {"status": "not installed", "error": "redis-server is not installed"},
        },
    }
    rows = {
        key: {
            "seconds": [2.0],
            "mib_s": rate,
            "mib_s_min": rate,
            "mib_s_max": rate,
            "seconds_median": 1024 / rate,
        }
        for key, rate in zip(
            volumes.ROWS, (1024.0, 4096.0, 256.0, 512.0, 1024.0, 256.0, 4096.0, 128.0), strict=True
        )
    }
    results["volumes"] = {"mib": 1024, "repetitions": 1, "status": "ok", "rows": rows, "version": "0.1"}
    results["reproducibility"] = {"compared": False, "reason": "the previous run was on another machine"}
    page = render_markdown(results)
    assert "## Storage: Volume throughput" in page
    assert "| Client: `batch_upload` (hash, upload, commit) | 256 | 4.00 | 0.25x |" in page  # vs disk write
    assert "| Client: `read_file` | 512 | 2.00 | 0.12x |" in page  # vs disk read
    assert volumes.render({"mib": 1, "repetitions": 1, "status": "error", "error": "boom"})[-2].startswith(
        "Not measured"
    )
    assert "## Autoscaling reaction" in page and "| 1.90 s |" in page  # the 20th container at 1.9 s
    assert "not installed" in page
    assert "## Control plane scale" in page and "2,000 inputs/s" in page and "300 bytes per input" in page
    assert "Not compared: the previous run was on another machine." in page
    assert "## Storage" in page and "not installed: redis-server is not installed" in page
    assert scale.render({"inputs": 10, "status": "error", "error": "boom"})[-2].startswith("Not measured")


def test_unknown_peer_or_benchmark_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--only", "nope"]) == 2
    assert cli.main(["--bench", "latency,warp"]) == 2
    assert "unknown benchmark warp" in capsys.readouterr().err


def test_smoke_run_of_the_command_with_the_floor_peer(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--only",
            "multiprocessing",
            "--bench",
            "latency,throughput",
            "--calls",
            "5",
            "--inputs",
            "50",
            "--repetitions",
            "1",
            "--workers",
            "1",
            "--results",
            str(out),
            "--docs",
            str(tmp_path / "b.md"),
            "--charts",
            str(tmp_path / "charts"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    mp = results["peers"]["multiprocessing"]
    assert mp["status"] == "ok" and mp["benchmarks"]["latency"]["n"] == 5
    assert mp["benchmarks"]["throughput"]["inputs"] == 50
    assert "multiprocessing.Pool (floor)" in (tmp_path / "b.md").read_text()
