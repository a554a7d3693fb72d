"""Subprocess entry point: run the chosen benchmarks against one peer and print JSON on stdout.

``python -m benchmarks.peer_runner PEER BENCH[,BENCH...] CONFIG_JSON``

Peer libraries log freely (Ray, Dask), and their child processes inherit our descriptors, so the real
stdout is set aside at start-up and fd 1 is pointed at stderr: the one JSON document written at the end
is the only thing on stdout.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from benchmarks.config import RunConfig
from benchmarks.registry import benchmark, peer


def run_peer(name: str, bench_names: Sequence[str], config: RunConfig) -> dict[str, Any]:
    """Figures of one peer as a JSON-ready dict; failures become ``status`` values, never exceptions."""
    info = peer(name)
    if importlib.util.find_spec(info.requires) is None:
        return {"status": "not installed", "error": f"cannot import {info.requires!r}"}
    try:
        module: Any = importlib.import_module(info.module)
        version = module.version()
    except Exception:
        return {"status": "error", "error": "import failed:\n" + traceback.format_exc(limit=8)}
    out: dict[str, Any] = {"status": "ok", "version": version, "benchmarks": {}}
    _log(f"{name} {version}: starting")
    started = time.perf_counter()
    try:
        with module.session(config) as sess:
            out["startup_s"] = time.perf_counter() - started
            for bench_name in bench_names:
                _log(f"{name}: {bench_name}")
                try:
                    out["benchmarks"][bench_name] = benchmark(bench_name).measure(sess, config)
                except Exception:
                    out["benchmarks"][bench_name] = {"error": traceback.format_exc(limit=8)}
                    out["status"] = "error"
    except Exception:
        out["status"] = "error"
        out["error"] = traceback.format_exc(limit=8)
    return out


def main(argv: Sequence[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    name, benches, raw_config = argv
    real_stdout = os.dup(1)  # not inheritable: children of peer libraries never see it
    os.dup2(2, 1)
    try:
        result = run_peer(name, benches.split(","), RunConfig.from_json(raw_config))
    except Exception:
        result = {"status": "error", "error": traceback.format_exc(limit=8)}
    sys.stdout.flush()
    with os.fdopen(real_stdout, "w") as stdout:
        json.dump(result, stdout)
    return 0


def _log(message: str) -> None:
    print(f"[peer] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
