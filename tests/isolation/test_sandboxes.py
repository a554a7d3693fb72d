"""Sandboxes in real containers, under runsc (gVisor) and crun: processes and their streams, stdin,
binary and very large output, files, names and tags, timeouts, OOM, termination, and nothing left on
the worker afterwards."""

import hashlib
import os
import threading
import time

import pytest

import vivace
from vivace import exception as exc
from vivace.sandbox import StreamType
from vivace.testing.cluster import LocalCluster

from .conftest import WorkerFootprint, require_runtime, sdk_pointed_at, wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]

RUNTIMES = ("runsc", "crun")
PY = "python3"


@pytest.fixture(scope="module", params=RUNTIMES)
def env(request, tmp_path_factory):
    """(runtime, app, worker footprint) for a cluster whose worker offers only that runtime."""
    rt = request.param
    require_runtime(rt)
    home = tmp_path_factory.mktemp(f"sbx-{rt}")
    fp = WorkerFootprint(home / "worker")
    with (
        LocalCluster(home, runtimes=[rt], warm_pool=0, worker_memory=8192) as cluster,
        sdk_pointed_at(cluster),
    ):
        app = vivace.App.lookup(f"sandbox-tests-{rt}", create_if_missing=True)
        yield rt, app, fp
    # a stopped worker leaves nothing: no cgroup, mount, namespace, link, chain or runtime state
    assert fp.container_cgroups() == {}
    assert fp.mounts() == []
    assert fp.namespaces() == [] and fp.links() == [] and fp.chains() == []


@pytest.fixture(scope="module")
def sb(env):
    """One idle sandbox shared by the tests that only exec into it."""
    _, app, _ = env
    box = vivace.Sandbox.create(app=app, timeout=600)
    yield box
    box.terminate()


def py(sb, code, **kw):
    return sb.exec(PY, "-c", code, **kw)


def test_exec_streams_stdout_stderr_and_exit_code(sb):
    p = py(sb, "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)")
    assert p.stdout.read() == "out\n"
    assert p.stderr.read() == "err\n"
    assert p.wait() == 3 and p.returncode == 3
    assert p.poll() == 3


def test_lines_arrive_while_the_process_runs(sb):
    p = py(
        sb, "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)\ntime.sleep(30)"
    )
    seen = []
    for line in p.stdout:
        seen.append(line)
        if len(seen) == 3:
            break
    assert seen == ["0\n", "1\n", "2\n"]
    assert p.poll() is None  # still sleeping: the lines came before it exited


def test_stdin_is_interactive_and_binary_safe(sb):
    p = py(sb, "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)")
    p.stdin.write(b"hello\n")
    p.stdin.drain()
    assert next(iter(p.stdout)) == "HELLO\n"  # answered before stdin closed
    p.stdin.write("world\n")
    p.stdin.write_eof()
    p.stdin.drain()
    assert p.stdout.read() == "WORLD\n"
    assert p.wait() == 0
    blob = bytes(range(256)) * 4096  # 1 MiB of every byte value
    q = py(
        sb, "import sys, hashlib; d = sys.stdin.buffer.read(); print(len(d), hashlib.sha256(d).hexdigest())"
    )
    q.stdin.write(blob)
    q.stdin.write_eof()
    q.stdin.drain()
    assert q.stdout.read().split() == [str(len(blob)), hashlib.sha256(blob).hexdigest()]


def test_binary_and_very_large_output_arrive_whole(sb):
    size = 64 << 20  # beyond what the worker buffers for an exec'd stream (4 MiB): it must block, not drop
    code = (
        "import sys, hashlib\nh = hashlib.sha256()\nchunk = bytes(range(256)) * 4096\n"
        f"for _ in range({size} // len(chunk)):\n    sys.stdout.buffer.write(chunk); h.update(chunk)\n"
        "sys.stdout.flush(); print(h.hexdigest(), file=sys.stderr)"
    )
    p = py(sb, code, text=False)
    h, total = hashlib.sha256(), 0
    for chunk in p.stdout:
        assert isinstance(chunk, bytes)
        h.update(chunk)
        total += len(chunk)
    assert total == size
    assert p.stderr.read().decode().strip() == h.hexdigest()
    assert p.wait() == 0


def test_devnull_output_never_blocks_the_process(sb):
    p = py(sb, "import sys\nsys.stdout.write('x' * (16 << 20))", stdout=StreamType.DEVNULL)
    assert p.wait() == 0  # 16 MiB nobody reads: dropped by the worker, not a blocked pipe


def test_exec_env_workdir_and_timeout(sb):
    p = py(
        sb, "import os; print(os.getcwd(), os.environ['GREETING'])", env={"GREETING": "hi"}, workdir="/tmp"
    )
    assert p.stdout.read() == "/tmp hi\n"
    slow = py(sb, "import time; time.sleep(60)", timeout=1)
    assert slow.wait() == 124  # killed at its timeout, as timeout(1) reports it
    with pytest.raises(exc.InvalidError):
        sb.exec()
    with pytest.raises(exc.InvalidError):
        sb.exec(PY, workdir="relative")
    with pytest.raises(exc.InvalidError):
        sb.exec(PY, timeout=-1)


def test_filesystem_round_trip(sb, tmp_path):
    fs = sb.filesystem
    fs.write_text("hello", "/work/notes/a.txt")
    assert fs.read_text("/work/notes/a.txt") == "hello"
    big = bytes(range(256)) * (40 * 4096)  # 40 MiB: several chunks each way
    fs.write_bytes(big, "/work/big.bin")
    assert fs.read_bytes("/work/big.bin") == big
    assert py(sb, "print(open('/work/notes/a.txt').read())").stdout.read() == "hello\n"  # the same files
    fs.make_directory("/work/x/y")
    names = {e["name"]: e["type"] for e in fs.list_files("/work")}
    assert names == {"notes": "directory", "big.bin": "file", "x": "directory"}
    assert fs.stat("/work/big.bin")["size"] == len(big)
    local = tmp_path / "copy.bin"
    fs.copy_to_local("/work/big.bin", local)
    assert local.read_bytes() == big
    (tmp_path / "up.txt").write_text("uploaded")
    fs.copy_from_local(tmp_path / "up.txt", "/work/up.txt")
    assert fs.read_text("/work/up.txt") == "uploaded"
    with pytest.raises(exc.SandboxFilesystemError):
        fs.remove("/work/x")  # not empty
    fs.remove("/work/x", recursive=True)
    with pytest.raises(exc.SandboxFilesystemNotFoundError):
        fs.read_text("/work/x/y")
    with pytest.raises(exc.SandboxFilesystemPermissionError):
        fs.write_text("no", "/proc/sys/kernel/hostname")
    with pytest.raises(exc.InvalidError):
        fs.read_text("relative/path")


def test_main_process_output_exit_code_and_stdin(env):
    _, app, _ = env
    sb = vivace.Sandbox.create(
        PY, "-c", "import sys; print(sys.stdin.readline().strip()[::-1]); sys.exit(7)", app=app
    )
    sb.stdin.write(b"sandbox\n")
    sb.stdin.drain()
    sb.wait()  # exited by itself, with a failure code: no exception
    assert sb.returncode == 7
    assert sb.stdout.read() == "xobdnas\n"  # still readable after the exit
    assert sb.poll() == 7
    with pytest.raises(exc.SandboxTerminatedError):
        sb.exec(PY, "-c", "pass")


def test_names_tags_lookup_and_list(env):
    _, app, _ = env
    a = vivace.Sandbox.create(app=app, name="alpha", tags={"team": "ml", "run": "1"})
    b = vivace.Sandbox.create(app=app, tags={"team": "ml", "run": "2"})
    try:
        with pytest.raises(exc.AlreadyExistsError):
            vivace.Sandbox.create(app=app, name="alpha")
        assert vivace.Sandbox.from_name(app.name, "alpha").object_id == a.object_id
        assert vivace.Sandbox.from_id(b.object_id).object_id == b.object_id
        ml = {s.object_id for s in vivace.Sandbox.list(app_id=app.app_id, tags={"team": "ml"})}
        assert {a.object_id, b.object_id} <= ml
        assert [s.object_id for s in vivace.Sandbox.list(app_id=app.app_id, tags={"run": "2"})] == [
            b.object_id
        ]
        b.set_tags({"team": "infra"})
        assert b.get_tags() == {"team": "infra"}
        with pytest.raises(exc.InvalidError):
            vivace.Sandbox.create(app=app, name="no spaces allowed")
        with pytest.raises(exc.InvalidError):
            b.set_tags({"k": 1})
    finally:
        a.terminate()
        b.terminate()
    with pytest.raises(exc.SandboxTerminatedError):
        a.wait()
    # a finished sandbox's name is free again
    c = vivace.Sandbox.create(app=app, name="alpha")
    c.terminate(wait=True)
    assert c.poll() is not None
    with pytest.raises(exc.NotFoundError):
        vivace.Sandbox.from_name(app.name, "alpha")


def test_timeout_is_enforced_by_the_worker(env):
    _, app, _ = env
    sb = vivace.Sandbox.create(PY, "-c", "import time; time.sleep(600)", app=app, timeout=2)
    with pytest.raises(exc.SandboxTimeoutError):
        sb.wait()
    assert sb.returncode is not None


def test_idle_timeout_counts_running_execs_as_activity(env):
    _, app, _ = env
    sb = vivace.Sandbox.create(app=app, idle_timeout=2, timeout=120)
    p = py(sb, "import time; time.sleep(4); print('done')")
    assert p.stdout.read() == "done\n"  # 4 s of exec outlived the 2 s idle timeout
    started = time.monotonic()
    with pytest.raises(exc.SandboxTimeoutError):
        sb.wait()
    assert time.monotonic() - started < 60


def test_out_of_memory_is_reported(env):
    _, app, _ = env
    sb = vivace.Sandbox.create(
        PY, "-c", "x = bytearray(512 << 20); x[::4096] = b'1' * len(x[::4096])", app=app, memory=(64, 64)
    )
    sb.wait(raise_on_termination=False)
    info = vivace.Sandbox.from_id(sb.object_id)._info
    assert info["result"] == "oom", info
    assert sb.returncode == 137


def test_no_api_access_inside(sb):
    out = py(
        sb,
        "import os, json; print(json.dumps(sorted(k for k in os.environ if 'VIVACE' in k or 'TOKEN' in k)), os.path.exists('/run/vivace'))",
    )
    assert out.stdout.read().split() == ['["VIVACE_TASK_ID"]', "False"]


def test_many_sandboxes_at_once_all_start_and_are_cleaned_up(env):
    rt, app, fp = env
    n = 100 if rt == "crun" else 40  # gVisor's sentry costs ~40 MiB each: fewer on a 2-core CI machine
    boxes: list = [None] * n
    errors = []

    def make(i):
        try:
            boxes[i] = vivace.Sandbox.create(PY, "-c", f"print({i})", app=app, cpu=0.01, memory=64)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, box in enumerate(boxes):
        box.wait()
        assert box.returncode == 0
        assert box.stdout.read() == f"{i}\n"
    ids = {b._info["container_id"] for b in boxes}
    wait_for(lambda: not ids & set(fp.container_cgroups()), "the sandboxes' cgroups to go", timeout=120)
    assert not [m for m in fp.mounts() if any(c in str(m) for c in ids)]


def test_wait_until_ready_with_tcp_and_exec_probes(env):
    _, app, _ = env
    server = "import socket, time\ntime.sleep(1)\ns = socket.socket(); s.bind(('127.0.0.1', 8765)); s.listen()\ntime.sleep(600)"
    sb = vivace.Sandbox.create(PY, "-c", server, app=app, readiness_probe=vivace.Probe.with_tcp(8765))
    sb.wait_until_ready(timeout=60)
    check = py(sb, "import socket; socket.create_connection(('127.0.0.1', 8765), 1); print('up')")
    assert check.stdout.read() == "up\n"  # ready means listening
    sb.terminate()
    marker = "import os, time\ntime.sleep(1)\nopen('/tmp/ready', 'w').close()\ntime.sleep(600)"
    probe = vivace.Probe.with_exec(
        PY, "-c", "import os, sys; sys.exit(0 if os.path.exists('/tmp/ready') else 1)"
    )
    sb = vivace.Sandbox.create(PY, "-c", marker, app=app, readiness_probe=probe)
    sb.wait_until_ready(timeout=60)
    assert sb.filesystem.stat("/tmp/ready")["type"] == "file"
    sb.terminate()
    never = vivace.Sandbox.create(app=app, readiness_probe=vivace.Probe.with_tcp(9))
    with pytest.raises(exc.TimeoutError):
        never.wait_until_ready(timeout=1)
    never.terminate()


def test_network_policy_open_blocked_and_allowlisted(env, test_host, host_listener):
    _, app, _ = env
    addr, port = test_host
    reach = (
        "import socket, sys\ntry:\n    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)\n"
        "    print(s.recv(5).decode())\nexcept OSError as e:\n    print('denied', type(e).__name__)"
    )

    def attempt(box, host, p):
        return box.exec(PY, "-c", reach, host, str(p)).stdout.read().strip()

    cases = [
        ({}, "hello"),
        ({"block_network": True}, "denied"),
        ({"outbound_cidr_allowlist": [f"{addr}/32"]}, "hello"),
        ({"outbound_cidr_allowlist": ["10.99.0.0/16"]}, "denied"),
    ]
    for kwargs, expected in cases:
        box = vivace.Sandbox.create(app=app, **kwargs)
        try:
            assert attempt(box, addr, port).startswith(expected), kwargs
            # an allowlist never reopens the host's own services: the gateway (the host) stays closed
            gateway = (
                box.exec(
                    PY,
                    "-c",
                    "import socket, struct\nfor line in open('/proc/net/route').readlines()[1:]:\n    f = line.split()\n    if f[1] == '00000000':\n        print(socket.inet_ntoa(struct.pack('<L', int(f[2], 16))))",
                )
                .stdout.read()
                .split()
            )
            if gateway:
                assert attempt(box, gateway[0], host_listener).startswith("denied"), kwargs
        finally:
            box.terminate()
    wide = vivace.Sandbox.create(app=app, outbound_cidr_allowlist=["0.0.0.0/0"])
    try:
        gateway = wide.exec(PY, "-c", "print(open('/proc/net/route').read())").stdout.read()
        assert gateway  # has a route out
        assert attempt(wide, addr, port) == "hello"
        assert attempt(wide, "10.213.0.1", host_listener).startswith("denied")  # other slots' addresses
    finally:
        wide.terminate()


ECHO_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith('/stream'):
            self.send_response(200); self.send_header('content-type', 'text/plain'); self.end_headers()
            for i in range(3):
                self.wfile.write(f'chunk {i}\\n'.encode()); self.wfile.flush()
            return
        body = f'{self.path} {self.headers.get("x-probe")}'.encode()
        self.send_response(200); self.send_header('content-length', str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        data = self.rfile.read(int(self.headers['content-length']))
        self.send_response(201); self.send_header('content-length', str(len(data))); self.end_headers()
        self.wfile.write(data[::-1])
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', 8000), H).serve_forever()
"""


def test_tunnels_reach_a_port_inside_the_sandbox(env):
    import httpx

    _, app, _ = env
    sb = vivace.Sandbox.create(
        PY, "-c", ECHO_SERVER, app=app, encrypted_ports=[8000], readiness_probe=vivace.Probe.with_tcp(8000)
    )
    try:
        sb.wait_until_ready(timeout=60)
        tunnel = sb.tunnels()[8000]
        assert tunnel.url.endswith("/") and "/t/" in tunnel.url
        with httpx.Client(timeout=30) as http:  # no credentials: the URL is the capability
            r = http.get(tunnel.url + "hello?x=1", headers={"x-probe": "yes"})
            assert (r.status_code, r.text) == (200, "/hello?x=1 yes")
            body = bytes(range(256)) * 4096  # 1 MiB, binary
            r = http.post(tunnel.url + "echo", content=body)
            assert r.status_code == 201 and r.content == body[::-1]
            r = http.get(tunnel.url + "stream")
            assert r.text == "chunk 0\nchunk 1\nchunk 2\n"
            bad = http.get(tunnel.url.replace("/t/", "/t/x") + "hello")
            assert bad.status_code == 404
    finally:
        sb.terminate()
    no_server = vivace.Sandbox.create(app=app, unencrypted_ports=[9000])
    try:
        url = no_server.tunnels()[9000].url
        import httpx as h

        r = h.get(url, timeout=30)
        assert r.status_code == 502 and "port 9000" in r.text
    finally:
        no_server.terminate()


TCP_SERVER = """
import hashlib, socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 7000)); s.listen(8)
def serve(c):
    c.sendall(b'hi\\n')
    h, n = hashlib.sha256(), 0
    while data := c.recv(65536):
        h.update(data); n += len(data)
    c.sendall(f'{n} {h.hexdigest()}'.encode())  # after the client's half-close
    c.close()
while True:
    threading.Thread(target=serve, args=(s.accept()[0],)).start()
"""


def _tcp_round_trip(address, payload: bytes) -> tuple[bytes, bytes]:
    """Connect, read the greeting, send ``payload``, half-close, read the answer to the end."""
    import socket

    with socket.create_connection(address, timeout=30) as c:
        greeting = b""
        while not greeting.endswith(b"\n"):
            greeting += c.recv(1)
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := c.recv(65536):
            answer += chunk
    return greeting, answer


def test_raw_tcp_tunnels_for_unencrypted_ports(env):
    import concurrent.futures
    import socket

    _, app, _ = env
    sb = vivace.Sandbox.create(
        PY, "-c", TCP_SERVER, app=app, unencrypted_ports=[7000], encrypted_ports=[8000],
        readiness_probe=vivace.Probe.with_tcp(7000),
    )  # fmt: skip
    try:
        sb.wait_until_ready(timeout=60)
        tunnels = sb.tunnels()
        with pytest.raises(exc.InvalidError, match="unencrypted_ports"):
            tunnels[8000].tcp_socket  # noqa: B018 (an HTTP tunnel only)
        address = tunnels[7000].tcp_socket
        assert address[0] == "127.0.0.1" and address[1] > 0
        assert sb.tunnels()[7000].tcp_socket == address  # the same listener each time
        payloads = [os.urandom(3 << 20), b"", os.urandom(1000)]  # binary, empty, small: at once
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda p: _tcp_round_trip(address, p), payloads))
        for payload, (greeting, answer) in zip(payloads, results, strict=True):
            assert greeting == b"hi\n"
            assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()
    finally:
        sb.terminate()

    def closed() -> bool:
        try:
            socket.create_connection(address, timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(closed, "the tunnel's listener to close after the sandbox stopped", 30)

    nothing = vivace.Sandbox.create(app=app, unencrypted_ports=[7001])
    try:  # nothing listens there: the connection is accepted, then closed without data
        with socket.create_connection(nothing.tunnels()[7001].tcp_socket, timeout=30) as c:
            assert c.recv(10) == b""
    finally:
        nothing.terminate()


def test_exec_on_a_terminal(sb):
    p = py(
        sb,
        "import os, sys\nprint(os.isatty(0), os.isatty(1), os.environ['TERM'])\nprint(input('name? ').upper())",
        pty=True,
    )
    p.stdin.write(b"ada\n")
    p.stdin.drain()
    assert p.wait() == 0
    out = p.stdout.read().replace("\r\n", "\n")
    # the terminal echoes what was typed wherever it lands (the bytes race the program's own output),
    # and the program answers last
    assert "True True xterm-256color\n" in out, out
    assert out.count("ada") == 1 and "name? " in out and out.endswith("ADA\n"), out
    assert p.stderr.read() == ""  # one stream on a terminal
    sh = sb.exec("/bin/sh", "-i", pty=True)
    sh.stdin.write(b"echo $((6 * 7))\nexit 3\n")
    sh.stdin.drain()
    assert sh.wait() == 3
    assert "42" in sh.stdout.read()


def test_exec_secrets_reach_the_process_only(env):
    _, app, _ = env
    secret = vivace.Secret.from_dict({"API_TOKEN": "tok-exec-7c1f", "MODE": "secret"})
    sb = vivace.Sandbox.create(app=app)
    try:
        p = sb.exec(
            PY,
            "-c",
            "import os; print(os.environ['API_TOKEN'], os.environ['MODE'])",
            env={"MODE": "env"},
            secrets=[secret],
        )
        assert p.stdout.read() == "tok-exec-7c1f secret\n"  # a secret's key wins over env=
        q = py(sb, "import os; print('API_TOKEN' in os.environ)")
        assert q.stdout.read() == "False\n"  # only that process got it
    finally:
        sb.terminate()


def test_a_function_makes_sandboxes_with_only_its_own_secrets(env):
    rt, _, _ = env
    vivace.Secret.objects.create(f"own-{rt}", {"OWN": "mine-5d2e"}, overwrite=True)
    vivace.Secret.objects.create(f"other-{rt}", {"OTHER": "not-mine-9b7a"}, overwrite=True)
    maker = vivace.App(f"sandbox-maker-{rt}")

    @maker.function(serialized=True, secrets=[vivace.Secret.from_name(f"own-{rt}")])
    def make(name: str) -> str:
        import vivace as v

        try:
            sb = v.Sandbox.create(secrets=[v.Secret.from_name(name)], runtime=rt)
        except v.exception.PermissionDeniedError as err:
            return f"denied: {err}"
        try:
            p = sb.exec("python3", "-c", "import os; print(os.environ.get('OWN'), os.environ.get('OTHER'))")
            return p.stdout.read().strip()
        finally:
            sb.terminate()

    try:
        with maker.run():
            assert make.remote(f"own-{rt}") == "mine-5d2e None"  # inside a function, app= is its own
            denied = make.remote(f"other-{rt}")
            assert denied.startswith("denied: a function may give a sandbox only its own secrets"), denied
    finally:
        for name in (f"own-{rt}", f"other-{rt}"):
            vivace.Secret.objects.delete(name)


def test_the_main_process_on_a_terminal(env):
    _, app, _ = env
    code = "import os, sys\nprint(os.isatty(0), os.isatty(1), os.environ['TERM'])\nprint(input('name? ').upper())"
    sb = vivace.Sandbox.create(PY, "-c", code, app=app, pty=True)
    sb.stdin.write(b"grace\n")
    sb.stdin.drain()
    sb.wait()
    assert sb.returncode == 0
    out = sb.stdout.read().replace("\r\n", "\n")
    # the terminal echoes what was typed, wherever the timing put it (even inside the first line)
    assert "grace\n" in out, out
    rest = out.replace("grace\n", "", 1)
    assert "True True xterm-256color\n" in rest and "name? " in rest and "GRACE\n" in rest, out
