import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VIVACE = [sys.executable, "-m", "vivace.cli.main"]


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "vivace-home"
    yield h
    subprocess.run([*VIVACE, "server", "stop"], env=env_for(h), capture_output=True, timeout=60)
    leftovers = subprocess.run(["pgrep", "-f", str(h)], capture_output=True, text=True).stdout.split()
    for pid in leftovers:
        subprocess.run(["kill", "-9", pid], capture_output=True)
    assert not leftovers, f"processes outlived `vivace server stop`: {leftovers}"


def env_for(home, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIVACE_", "MODAL_"))}
    env.update({"VIVACE_HOME": str(home), "VIVACE_APP_HEARTBEAT_TIMEOUT": "4", **extra})
    return env


def vivace(home, *args, timeout=120, check=False, **extra):
    proc = subprocess.run(
        [*VIVACE, *args],
        cwd=ROOT,
        env=env_for(home, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"vivace {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def wait_for(pred, timeout=30.0, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")
