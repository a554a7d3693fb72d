"""Autoscaling reaction: a burst of one-second inputs on a function allowed 20 containers, from zero.

Vivace: ``list(f.map(range(200)))`` on ``autoscale_app.one_second`` (``max_containers=20``, 0.05 cores
each) with the worker's defaults (crun, a warm pool of 2), after every container of the last burst
scaled down. Each input reports the container it ran in and when it started, so the figures come from
the inputs themselves: when the first input started, when the 20th container started its first input,
when the last input finished (the ideal is 10 s: 200 inputs over 20 containers), and the most inputs
running at once. Ray, for reference, in its own subprocess (``autoscale_ray.py``): tasks, and Ray Data's
autoscaling actor pool (``ActorPoolStrategy(min_size=1, max_size=20)``), asking for the same cores per task or actor.
"""

from __future__ import annotations

import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import coldstart, driver
from benchmarks.autoscale_work import CPU, MAX_CONTAINERS
from benchmarks.config import RunConfig
from benchmarks.markdown import row
from benchmarks.stats import ramp_summary

INPUTS = 200
WARM_POOL = 2
PEERS: dict[str, str] = {
    "vivace": "Vivace `list(f.map(range(200)))`, `max_containers=20`, crun, worker defaults",
    "ray-tasks": "Ray `ray.get([f.remote(i) for i in range(200)])`, tasks of `num_cpus=0.05`",
    "ray-data": "Ray Data `map_batches(Cls, batch_size=1, compute=ActorPoolStrategy(min_size=1, max_size=20))`",
}
KEYS = ("first_start_s", "to_target_s", "makespan_s", "max_concurrent")


def repetitions_for(config: RunConfig) -> int:
    return 1 if config.mode == "quick" else 3


def run(config: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    reps = repetitions_for(config)
    out: dict[str, Any] = {
        "inputs": INPUTS,
        "max_containers": MAX_CONTAINERS,
        "cpu": CPU,
        "repetitions": reps,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "peers": {},
    }
    work = Path(tempfile.mkdtemp(prefix="vivace-autoscale-"))
    cgroups_before = coldstart._top_cgroups() if os.geteuid() == 0 else set()
    try:
        log(f"autoscale: vivace ({reps} burst(s) of {INPUTS})")
        out["peers"]["vivace"] = _guarded(lambda: _vivace(work / "vivace", reps))
    finally:
        coldstart._unmount_all(work)
        shutil.rmtree(work, ignore_errors=True)
        if cgroups_before:
            coldstart._remove_cgroups(coldstart._top_cgroups() - cgroups_before)
    # Ray Data's pool takes about a minute per burst here: the full run only
    kinds = ["tasks"] if config.mode == "quick" else ["tasks", "data"]
    log(f"autoscale: ray {' and '.join(kinds)} ({reps} burst(s) of {INPUTS} each)")
    cmd = [sys.executable, "-m", "benchmarks.autoscale_ray", str(INPUTS), str(reps), ",".join(kinds)]
    ray = driver.run_json_process(cmd, config.peer_timeout_s, False, {})
    for kind in ("tasks", "data"):
        if kind not in kinds:
            out["peers"][f"ray-{kind}"] = {"status": "skipped", "error": "not run with --quick"}
            continue
        result = ray.get(kind) if "status" not in ray else ray
        out["peers"][f"ray-{kind}"] = _summarise(result or {"status": "error", "error": "no result"})
    for name, r in out["peers"].items():
        if r.get("status") == "ok":
            log(f"autoscale: {name}: {MAX_CONTAINERS} running after {_fmt(r['to_target_s'])}")
    return out


def _guarded(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return _summarise(measure())
    except coldstart.Unavailable as err:
        return {"status": "not installed", "error": str(err)}
    except Exception as err:  # the other peers' figures are kept
        return {"status": "error", "error": f"{type(err).__name__}: {err}"}


def _vivace(work: Path, reps: int) -> dict[str, Any]:
    coldstart._need_root("Vivace's crun runtime")
    coldstart._which("crun")
    import vivace
    from benchmarks.cluster import local_cluster

    with local_cluster(work, warm_pool=WARM_POOL) as cluster:
        sys.modules.pop("benchmarks.autoscale_app", None)
        app: Any = importlib.import_module("benchmarks.autoscale_app")
        runs = []
        for i in range(reps + 1):  # the first input fetches the function's source: untimed
            coldstart._wait(
                lambda: coldstart._settled(cluster.home / "worker", cluster.home / "worker.log", WARM_POOL),
                "the last burst's containers to scale down and the pool to refill",
                120,
            )
            with app.app.run():
                if i == 0:
                    app.second.remote(0)
                    continue
                submitted = time.time()
                starts = [tuple(r) for r in app.second.map(range(INPUTS))]
            runs.append(ramp_summary(submitted, starts, MAX_CONTAINERS))
    return {"status": "ok", "version": vivace.__version__, "runs": runs}


def _summarise(result: Mapping[str, Any]) -> dict[str, Any]:
    """Per key, the median over the runs (``None`` if any run never got there), plus min and max."""
    if result.get("status") != "ok":
        return dict(result)
    runs: Sequence[Mapping[str, Any]] = result["runs"]
    out: dict[str, Any] = dict(result)
    for key in KEYS:
        values = [r[key] for r in runs]
        reached = [v for v in values if v is not None]
        out[key] = statistics.median(reached) if len(reached) == len(values) else None
        out[f"{key}_min"] = min(reached) if reached else None
        out[f"{key}_max"] = max(reached) if reached else None
    out["workers"] = max(r["workers"] for r in runs)
    return out


def _fmt(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f} s"


def render(auto: Mapping[str, Any], chart: str | None, cores: int) -> list[str]:
    """The docs section; ``cores``: the machine's."""
    lines = [
        "## Autoscaling reaction: a burst from zero",
        "",
        f"{auto['inputs']} inputs that each sleep one second, submitted at once to a function allowed "
        f"{auto['max_containers']} containers ({auto['cpu']} cores each), with nothing running. Every figure "
        "comes from the inputs themselves (each reports where it ran and when it started); seconds after "
        f"the burst was submitted, median of {auto['repetitions']} burst(s) with min-max. "
        f"*All done* has an ideal of {auto['inputs'] // auto['max_containers']} s. Ray is for reference: "
        "a fresh local Ray cluster per burst (its start-up not timed), tasks or actors asking for the same "
        "cores. Ray's tasks have no cap of their own: at "
        f"{auto['cpu']} cores each, up to {int(cores / auto['cpu'])} may run at once on {cores} cores, "
        "hence more than 20 at the end; Ray Data's pool is capped at 20 actors. Lower is better."
        + (f" Measured {auto['measured_at']}." if auto.get("measured_at") else ""),
        "",
    ]
    head = ["What runs", "Version", "first input started", f"{auto['max_containers']} running",
            "all done", "most at once"]  # fmt: skip
    lines += [row(head), row(["---"] * len(head))]
    for name, label in PEERS.items():
        r = auto["peers"].get(name)
        if r is None:
            continue
        if r.get("status") != "ok":
            status = "not run with `--quick`" if r.get("status") == "skipped" else str(r.get("status"))
            lines.append(row([label, status, "—", "—", "—", "—"]))
            continue
        cells = [label, str(r.get("version", ""))]
        for key in KEYS[:3]:
            cells.append(_spread(r, key))
        cells.append(str(r["max_concurrent"]))
        lines.append(row(cells))
    if chart:
        lines += ["", f"![Autoscaling reaction]({chart})"]
    return [*lines, ""]


def _spread(r: Mapping[str, Any], key: str) -> str:
    if r.get(key) is None:
        top = r.get(f"{key}_max")
        return "never" if top is None else f"not in every burst (best {r[f'{key}_min']:.2f} s)"
    if r[f"{key}_min"] == r[f"{key}_max"]:
        return f"{r[key]:.2f} s"
    return f"{r[key]:.2f} s ({r[f'{key}_min']:.2f}-{r[f'{key}_max']:.2f})"


def chart(auto: Mapping[str, Any], path: Path, machine: Mapping[str, Any]) -> bool:
    """Inputs running at once over time, the median burst (by makespan) of each peer; False if nothing
    to draw."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    drawn = False
    for name, label in PEERS.items():
        r = auto["peers"].get(name) or {}
        if r.get("status") != "ok":
            continue
        runs = sorted(r["runs"], key=lambda x: x["makespan_s"])
        curve = runs[len(runs) // 2]["running"]
        xs = [0.0] + [t for t, _ in curve]
        ys = [0] + [c for _, c in curve]
        ax.step(xs, ys, where="post", label=label.split(" `")[0] + (" tasks" if name == "ray-tasks" else ""))
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.axhline(auto["max_containers"], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("seconds after the burst was submitted")
    ax.set_ylabel("inputs running")
    ax.set_title(
        f"Autoscaling reaction: {auto['inputs']} one-second inputs, at most {auto['max_containers']}\n"
        f"{machine['cpu_count']} CPUs, Python {machine['python']}"
    )
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
