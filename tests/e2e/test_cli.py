"""The `vivace` CLI on examples/, against the embedded default daemon."""

import json
import signal
import subprocess
import sys

import pytest

from .conftest import ROOT, VIVACE, env_for, vivace, wait_for

pytestmark = pytest.mark.timeout(180)


def api(home):
    import httpx

    from vivace._version import __version__

    creds = json.loads((home / "credentials.json").read_text())
    url = json.loads((home / "daemon.json").read_text())["url"]
    headers = {
        "authorization": f"Bearer {creds['token_id']}:{creds['token_secret']}",
        "x-vivace-version": __version__,
    }
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def test_hello_runs_on_the_embedded_default(home):
    proc = vivace(home, "run", "examples/hello.py", check=True)
    assert "16 [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in proc.stdout
    assert "squaring 4" in proc.stdout + proc.stderr  # live logs from the containers
    from vivace.worker.doctor import default_runtime

    # isolated (crun, runc) where the host has them; the process runtime says so on every run
    assert ("no isolation" in proc.stderr) == (default_runtime() == "process"), proc.stderr
    status = vivace(home, "server", "status", check=True)
    assert "running at http://127.0.0.1:" in status.stdout
    second = vivace(home, "run", "-q", "examples/hello.py", check=True)  # reuses the daemon
    assert "16 [0, 1" in second.stdout
    apps = vivace(home, "app", "list", "--all", check=True).stdout
    assert "demo" in apps and "stopped" in apps
    assert vivace(home, "server", "stop", check=True).stdout.startswith("Stopped")
    assert vivace(home, "server", "status").returncode == 1


def test_errors_are_one_line_with_meaningful_exit_codes(home):
    missing = vivace(home, "run", "examples/nope.py")
    assert missing.returncode == 2 and "Error: InvalidError" in missing.stderr
    no_fn = vivace(home, "run", "examples/hello.py::nope")
    assert no_fn.returncode == 4 and "nope" in no_fn.stderr
    bad = vivace(home, "app", "list", VIVACE_SERVER_URL="http://127.0.0.1:9", VIVACE_TOKEN_ID="tk-x")
    assert bad.returncode == 3 and "VIVACE_TOKEN_SECRET" in bad.stderr
    vivace(home, "run", "-q", "examples/hello.py", check=True)
    wrong = vivace(
        home,
        "app",
        "list",
        VIVACE_SERVER_URL=json.loads((home / "daemon.json").read_text())["url"],
        VIVACE_TOKEN_ID="tk-abcd1234",
        VIVACE_TOKEN_SECRET="wrong",
    )
    assert wrong.returncode == 3 and "AuthError" in wrong.stderr


def test_detach_exec_and_stop(home):
    proc = vivace(home, "run", "-d", "examples/warm.py", check=True)
    assert "pong" in proc.stdout
    with api(home) as http:
        app_id = http.get("/v1/apps").json()["apps"][0]["app_id"]

        def running():
            rows = http.get("/v1/containers", params={"app": app_id}).json()["containers"]
            return [r["container_id"] for r in rows if r["state"] == "running" and r["function"] == "ping"]

        cid = wait_for(running)[0]
    out = vivace(
        home, "container", "exec", cid, "python", "-c", "import os; print(os.environ['VIVACE_TASK_ID'])"
    )
    assert out.returncode == 0 and out.stdout.strip() == cid
    failing = vivace(home, "container", "exec", cid, "sh", "-c", "exit 7")
    assert failing.returncode == 7
    assert "Stopped" in vivace(home, "app", "stop", app_id, check=True).stdout
    with api(home) as http:
        wait_for(lambda: not http.get("/v1/containers", params={"app": app_id}).json()["containers"])


SLOW_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from examples.warm import app, slow
with app.run():
    print("started", flush=True)
    slow.remote(120)
"""


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_a_gone_client_stops_its_ephemeral_app(home, how):
    vivace(home, "run", "-q", "examples/hello.py", check=True)  # start the daemon
    script = SLOW_SCRIPT.format(root=str(ROOT))
    client = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env_for(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with api(home) as http:

        def slow_running():
            apps = [a for a in http.get("/v1/apps").json()["apps"] if a["name"] == "warm"]
            if not apps:
                return None
            rows = http.get("/v1/containers", params={"app": apps[0]["app_id"]}).json()["containers"]
            return (
                apps[0]["app_id"] if any(r["function"] == "slow" and r["inputs_held"] for r in rows) else None
            )

        app_id = wait_for(slow_running, timeout=60)
        client.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        client.wait(timeout=30)

        def stopped():
            apps = http.get("/v1/apps", params={"all": 1}).json()["apps"]
            state = next(a["state"] for a in apps if a["app_id"] == app_id)
            live = http.get("/v1/containers", params={"app": app_id}).json()["containers"]
            return state == "stopped" and not live

        wait_for(stopped, timeout=40)
    assert VIVACE  # the CLI entry point module is importable


LOOKUP_SCRIPT = """
import vivace
f = vivace.Function.from_name("demo", "square")
print(f.remote(7), list(f.map([1, 2, 3])))
missing = vivace.Function.from_name("demo", "nope")  # lazy, as Modal's: looked up on first use
try:
    missing.remote(1)
except vivace.exception.NotFoundError as e:
    print("missing:", e)
"""


def test_deploy_lookup_tokens_and_logs(home):
    out = vivace(home, "deploy", "examples/hello.py", check=True).stdout
    assert "Deployed app 'demo'" in out and "square" in out
    proc = subprocess.run(
        [sys.executable, "-c", LOOKUP_SCRIPT],
        cwd=ROOT,
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "49 [1, 4, 9]" in proc.stdout and "missing:" in proc.stdout
    logs = vivace(home, "app", "logs", "demo", check=True).stdout
    assert "squaring 7" in logs
    assert (
        "squaring 7" not in vivace(home, "app", "logs", "demo", "--search", "squaring 2", check=True).stdout
    )
    info = vivace(home, "token", "info", check=True).stdout
    assert "(user)" in info
    new = vivace(home, "token", "new", "--label", "ci", check=True).stdout
    token_id = new.split("token id:")[1].split()[0]
    secret = new.split("token secret:")[1].split()[0]
    url = json.loads((home / "daemon.json").read_text())["url"]
    other = vivace(
        home, "token", "info", VIVACE_SERVER_URL=url, VIVACE_TOKEN_ID=token_id, VIVACE_TOKEN_SECRET=secret
    )
    assert other.returncode == 0 and token_id in other.stdout
    assert "Stopped" in vivace(home, "app", "stop", "demo", check=True).stdout
