"""``vivace sandbox list|exec|logs|terminate`` and ``vivace shell`` against a real cluster whose worker runs
sandboxes under crun (as root; CI must have it), the CLI run as a subprocess as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vivace
from vivace.testing.cluster import LocalCluster

from .conftest import require_runtime, sdk_pointed_at, wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(240)]

APP = f"cli-sandboxes-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    require_runtime("crun")
    home = tmp_path_factory.mktemp("cli-sandbox")
    with LocalCluster(home, runtimes=["crun"], warm_pool=0) as c, sdk_pointed_at(c):
        try:
            yield c
        finally:
            for sb in vivace.Sandbox.list():  # nothing outlives the module
                sb.terminate()


@pytest.fixture(scope="module")
def app(cluster: LocalCluster) -> Any:
    return vivace.App.lookup(APP, create_if_missing=True)


def _cli(
    cluster: LocalCluster, *args: str, input: bytes | None = b"", timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, **cluster.client_env(), "COLUMNS": "250"}  # rich's tables: no wrapped ids
    return subprocess.run(
        [sys.executable, "-m", "vivace.cli.main", *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        env=env,
    )


def _ok(res: subprocess.CompletedProcess[bytes]) -> str:
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


def _one_line_error(res: subprocess.CompletedProcess[bytes], code: int, text: str) -> None:
    err = res.stderr.decode()
    assert res.returncode == code, (res.returncode, err)
    assert "Traceback" not in err and text in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_list_shows_sandboxes_by_tag_app_and_as_json(cluster: LocalCluster, app: Any) -> None:
    mark = uuid.uuid4().hex[:8]
    sb = vivace.Sandbox.create(app=app, tags={"mark": mark, "suite": "cli"}, name=f"lister-{mark}")
    try:
        out = _ok(_cli(cluster, "sandbox", "list", "--tag", f"mark={mark}"))
        assert sb.object_id in out and f"lister-{mark}" in out and APP in out and f"mark={mark}" in out
        assert sb.object_id not in _ok(_cli(cluster, "sandbox", "list", "--tag", "mark=other"))
        assert sb.object_id in _ok(_cli(cluster, "sandbox", "list", "--app", APP, "--tag", "suite=cli"))
        rows = json.loads(_ok(_cli(cluster, "sandbox", "list", "--json", "--tag", f"mark={mark}")))
        assert [r["sandbox_id"] for r in rows] == [sb.object_id]
        assert rows[0]["tags"] == {"mark": mark, "suite": "cli"} and rows[0]["state"] in (
            "pending",
            "running",
        )
    finally:
        sb.terminate(wait=True)
    assert sb.object_id not in _ok(_cli(cluster, "sandbox", "list", "--tag", f"mark={mark}"))
    finished = _ok(_cli(cluster, "sandbox", "list", "--all", "--tag", f"mark={mark}"))
    assert sb.object_id in finished and "finished" in finished and "terminated" in finished


@pytest.fixture(scope="module")
def idle(app: Any) -> Iterator[Any]:
    sb = vivace.Sandbox.create(app=app, tags={"role": "idle"})
    yield sb
    sb.terminate()


def test_exec_streams_both_outputs_and_exits_with_the_code(cluster: LocalCluster, idle: Any) -> None:
    script = "import sys; print('to out'); print('to err', file=sys.stderr); sys.exit(3)"
    res = _cli(cluster, "sandbox", "exec", idle.object_id, "python3", "-c", script)
    assert res.returncode == 3, res.stderr.decode()
    assert res.stdout == b"to out\n" and b"to err\n" in res.stderr
    ok = _cli(cluster, "sandbox", "exec", idle.object_id, "/bin/sh", "-c", "echo fine")
    assert _ok(ok) == "fine\n"


def test_exec_forwards_piped_stdin_and_is_binary_safe(cluster: LocalCluster, idle: Any) -> None:
    upper = "import sys; print(sys.stdin.read().upper())"
    res = _cli(cluster, "sandbox", "exec", idle.object_id, "python3", "-c", upper, input=b"hello\nsandbox\n")
    assert _ok(res) == "HELLO\nSANDBOX\n\n"
    payload = bytes(range(256)) * 1000
    echo = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])"
    res = _cli(cluster, "sandbox", "exec", idle.object_id, "python3", "-c", echo, input=payload)
    assert res.returncode == 0 and res.stdout == payload[::-1], res.stderr.decode()


def test_exec_stops_quietly_when_its_reader_goes_away(cluster: LocalCluster, idle: Any) -> None:
    env = {**os.environ, **cluster.client_env()}
    flood = "import sys\nfor _ in range(4096): sys.stdout.write('y' * 4096)"  # 16 MiB: beyond the buffers
    proc = subprocess.Popen(
        [sys.executable, "-m", "vivace.cli.main", "sandbox", "exec", idle.object_id, "python3", "-c", flood],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == b"y" * 10
    proc.stdout.close()  # as `| head -c 10` does
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_logs_show_the_main_process_and_follow_ends_with_it(cluster: LocalCluster, app: Any) -> None:
    sb = vivace.Sandbox.create(
        "python3", "-c", "import time; print('from main', flush=True); time.sleep(3); print('bye')", app=app
    )
    followed = _cli(cluster, "sandbox", "logs", "--follow", sb.object_id)  # returns when the sandbox ends
    assert followed.returncode == 0, followed.stderr.decode()
    assert followed.stdout.decode().splitlines()[:2] == ["from main", "bye"]
    assert vivace.Sandbox.from_id(sb.object_id)._info["state"] == "finished"
    assert "from main\nbye\n" in _ok(_cli(cluster, "sandbox", "logs", sb.object_id))


def test_terminate_ends_the_sandbox(cluster: LocalCluster, app: Any) -> None:
    sb = vivace.Sandbox.create(app=app)
    assert "Terminated" in _ok(_cli(cluster, "sandbox", "terminate", sb.object_id))
    info = vivace.Sandbox.from_id(sb.object_id)._info
    assert info["state"] == "finished" and info["result"] == "terminated"
    assert "already finished" in _ok(_cli(cluster, "sandbox", "terminate", sb.object_id))
    _one_line_error(_cli(cluster, "sandbox", "exec", sb.object_id, "true"), 1, "SandboxTerminatedError")


def _shell_sandbox(res: subprocess.CompletedProcess[bytes]) -> Any:
    sid = next(w for w in res.stderr.decode().split() if w.startswith("sb-"))
    return vivace.Sandbox.from_id(sid)


def test_shell_runs_piped_lines_and_terminates_its_sandbox(cluster: LocalCluster) -> None:
    res = _cli(cluster, "shell", "--app", APP, input=b"echo hi; echo oops >&2\nexit 4\n")
    assert res.returncode == 4, res.stderr.decode()
    assert res.stdout == b"hi\n" and b"oops" in res.stderr
    sb = _shell_sandbox(res)
    assert wait_for(lambda: vivace.Sandbox.from_id(sb.object_id)._info["state"] == "finished", "shell's end")


def test_shell_takes_the_image_of_a_function(cluster: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "shellapp.py").write_text(
        "import vivace\n\napp = vivace.App('shellapp')\n\n\n@app.function()\ndef f():\n    pass\n"
    )
    ref = f"{tmp_path / 'shellapp.py'}::f"
    res = _cli(
        cluster, "shell", "--app", APP, "--image-from", ref, "--cmd", "python3 -i", input=b"print(6*7)\n"
    )
    assert res.returncode == 0 and b"42" in res.stdout, res.stderr.decode()
    _one_line_error(_cli(cluster, "shell", "--image-from", f"{ref}x"), 4, "no function named 'fx'")


def test_bad_input_is_one_clear_line(cluster: LocalCluster) -> None:
    _one_line_error(_cli(cluster, "sandbox", "exec", "nope", "true"), 2, "sb-")
    _one_line_error(_cli(cluster, "sandbox", "logs", "sb-00000000000000000000"), 4, "does not exist")
    _one_line_error(_cli(cluster, "sandbox", "terminate", "sb-00000000000000000000"), 4, "does not exist")
    _one_line_error(_cli(cluster, "sandbox", "list", "--tag", "novalue"), 2, "KEY=VALUE")
    _one_line_error(_cli(cluster, "sandbox", "list", "--app", "no-such-app"), 4, "no running app")
    _one_line_error(_cli(cluster, "shell", "--cmd", "sh -c 'unclosed"), 2, "--cmd: No closing quotation")


def test_formatting_of_rows_tags_and_exit_codes() -> None:
    from vivace.cli import sandbox as cli

    assert cli._tags(("a=1", "b=x=y", "c=")) == {"a": "1", "b": "x=y", "c": ""}
    assert [cli._span(s) for s in (-1, 59, 60, 3599, 7200, 200000)] == ["0s", "59s", "1m", "59m", "2h", "2d"]
    assert [cli._exit_status(c) for c in (0, 3, -9, 300)] == [0, 3, 137, 255]
    row = {"sandbox_id": "sb-1", "app_id": "ap-1", "name": None, "state": "finished", "tags": {"k": "v"},
           "created_at": 100.0, "started_at": 110.0, "finished_at": 170.0, "returncode": 137,
           "result": "terminated"}  # fmt: skip
    assert cli._row(row, {"ap-1": "web"}, now=400.0) == {
        "sandbox_id": "sb-1", "app": "web", "name": "", "state": "finished", "tags": "k=v", "age": "5m",
        "ran": "1m", "exit": "137 (terminated)",
    }  # fmt: skip
    pending = {**row, "state": "pending", "started_at": None, "finished_at": None, "returncode": None}
    shown = cli._row(pending, {}, now=100.0)
    assert (shown["app"], shown["state"], shown["ran"], shown["exit"]) == ("ap-1", "pending", "", "")
