"""Deploy versions through the CLI and the real control plane: each deploy is a version, a deploy
retires the functions it no longer has, and a rollback serves the old code again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import vivace
from vivace import exception as exc

APPS = Path(__file__).parent / "apps"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "vivace.cli.main", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}, cwd=APPS,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _call(name: str) -> Any:
    return vivace.Function.from_name("versioned", name).remote()


def test_deploy_history_and_rollback(cluster: Any) -> None:
    assert "version 1," in _cli("deploy", str(APPS / "versioned_v1.py")).stdout
    assert _call("which") == "v1" and _call("only_in_v1") == "here"
    assert "version 2," in _cli("deploy", str(APPS / "versioned_v2.py")).stdout
    assert _call("which") == "v2"
    with pytest.raises(exc.Error):
        _call("only_in_v1")  # retired by the deploy that no longer has it
    history = _cli("app", "history", "versioned").stdout
    assert "only_in_v1, which" in history and "2" in history
    assert "back to version 1 (now version 3)" in _cli("app", "rollback", "versioned").stdout
    assert _call("which") == "v1" and _call("only_in_v1") == "here"
    assert "rollback to version 1" in _cli("app", "history", "versioned").stdout
    _cli("app", "rollback", "versioned", "2")
    assert _call("which") == "v2"
    bad = subprocess.run(
        [sys.executable, "-m", "vivace.cli.main", "app", "rollback", "versioned", "42"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip
    assert bad.returncode != 0 and "no version 42" in (bad.stdout + bad.stderr)


def test_a_redeploy_lets_calls_in_flight_finish_on_the_old_code(cluster: Any, app_loader: Any) -> None:
    import uuid

    load_app = app_loader
    queue_name = f"drain-{uuid.uuid4().hex[:8]}"
    os.environ["VIVACE_TEST_DRAIN_QUEUE"] = queue_name
    try:
        v1 = load_app("draining_v1")
    finally:
        os.environ.pop("VIVACE_TEST_DRAIN_QUEUE", None)
    v1.app.deploy()
    call = vivace.Function.from_name("draining", "slow").spawn()
    assert vivace.Queue.from_name(queue_name, create_if_missing=True).get(timeout=60) == "started"
    load_app("draining_v2").app.deploy()  # while the call runs (8 s, beyond the 5 s default grace)
    assert call.get(timeout=90) == "v1"  # finished where it ran, not cut off and retried on v2
    assert vivace.Function.from_name("draining", "slow").remote() == "v2"
