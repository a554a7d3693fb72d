"""Subprocess entry point: Ray's side of the autoscaling benchmark; prints one JSON document on stdout.

``python -m benchmarks.autoscale_ray INPUTS REPETITIONS KIND[,KIND]`` (kinds: ``tasks``, ``data``)

Two references, each started fresh (``ray.init`` per repetition, outside the timing) on a local Ray
cluster of this machine's cores, every task or actor asking for the cores a Vivace container asks for:

- ``tasks``: ``@ray.remote(num_cpus=CPU)`` tasks; Ray starts worker processes as the burst needs them;
- ``data``: Ray Data ``map_batches`` with a callable class on ``ActorPoolStrategy(min_size=1,
  max_size=20)``, Ray's autoscaling actor pool, one row per batch.

As in ``peer_runner``, fd 1 points at stderr while Ray runs, so the JSON is the only thing on stdout.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from benchmarks.autoscale_work import CPU, MAX_CONTAINERS, OneSecond, noop, pid_one_second
from benchmarks.stats import ramp_summary


def _tasks(n: int) -> tuple[float, list[tuple[str, float, float]]]:
    import ray

    ray.get(ray.remote(num_cpus=CPU)(noop).remote(0))  # untimed: the cluster answers
    f = ray.remote(num_cpus=CPU)(pid_one_second)
    submitted = time.time()
    return submitted, [tuple(r) for r in ray.get([f.remote(i) for i in range(n)])]


def _data(n: int) -> tuple[float, list[tuple[str, float, float]]]:
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.range(1).map_batches(noop_batch, batch_size=1).take_all()  # untimed: Ray Data is loaded
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=MAX_CONTAINERS)
    submitted = time.time()
    ds = ray.data.range(n, override_num_blocks=n).map_batches(
        OneSecond, batch_size=1, compute=pool, num_cpus=CPU
    )
    rows = ds.take_all()
    return submitted, [(r["worker"], r["start"], r["end"]) for r in rows]


def noop_batch(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def measure(kind: str, inputs: int, repetitions: int) -> dict[str, Any]:
    import ray

    if kind == "data" and importlib.util.find_spec("ray.data") is None:
        return {"status": "not installed", "error": "ray.data needs ray[data] (pyarrow)"}
    runs = []
    for _ in range(repetitions):
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        try:
            submitted, starts = (_tasks if kind == "tasks" else _data)(inputs)
        finally:
            ray.shutdown()
        runs.append(ramp_summary(submitted, starts, MAX_CONTAINERS))
    return {"status": "ok", "version": ray.__version__, "runs": runs}


def main(argv: Sequence[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    inputs, repetitions, kinds = int(argv[0]), int(argv[1]), argv[2].split(",")
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    out: dict[str, Any] = {}
    for kind in kinds:
        try:
            if importlib.util.find_spec("ray") is None:
                out[kind] = {"status": "not installed", "error": "cannot import 'ray'"}
            else:
                out[kind] = measure(kind, inputs, repetitions)
        except Exception:
            out[kind] = {"status": "error", "error": traceback.format_exc(limit=8)}
    sys.stdout.flush()
    with os.fdopen(real_stdout, "w") as stdout:
        json.dump(out, stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
