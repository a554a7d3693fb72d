"""Functions that probe their own container, for the isolation suite."""

import os
import socket
import time

import vivace

app = vivace.App("iso")


@app.function(max_containers=2)
def read(path):
    try:
        with open(path, "rb") as f:
            return f.read(200)
    except OSError as err:
        return type(err).__name__


@app.function(max_containers=2)
def listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError as err:
        return type(err).__name__


@app.function(max_containers=2)
def write_then_list(name):
    with open(f"/tmp/{name}", "w") as f:
        f.write("mine")
    return sorted(os.listdir("/tmp"))


@app.function(max_containers=2)
def write_own(i):
    import time

    tid = os.environ["MODAL_TASK_ID"]
    with open(f"/tmp/{tid}-{i}", "w") as f:
        f.write("mine")
    time.sleep(1.5)  # long enough that the second container starts even under emulation (tests/vm)
    return tid, sorted(os.listdir("/tmp"))


@app.function(env={"ISO_GREETING": "hello"})
def identity():
    return {
        "task_id": os.environ.get("MODAL_TASK_ID"),
        "greeting": os.environ.get("ISO_GREETING"),
        "vivace_task_id": os.environ.get("VIVACE_TASK_ID"),
        "leaked": sorted(
            k for k in os.environ if k.startswith("VIVACE_") and k not in ("VIVACE_SOCKET", "VIVACE_TASK_ID")
        ),
        "cwd": os.getcwd(),
    }


@app.function(max_containers=2)
def uid_map():
    with open("/proc/self/uid_map") as f:
        mapping = f.read().split()
    with open("/tmp/mine", "w") as f:
        f.write("x")
    return mapping, os.getuid(), os.stat("/tmp/mine").st_uid, os.stat("/usr/local/bin").st_uid


@app.function(max_containers=2)
def processes():
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


@app.function(memory=(64, 64), retries=0)
def hog(mib):
    chunks = [bytearray(1 << 20) for _ in range(mib)]
    return len(chunks)


@app.function(retries=0)
def fork_many(n):
    pids, failed = [], None
    for _ in range(n):
        try:
            pid = os.fork()
        except OSError as err:
            failed = type(err).__name__
            break
        if pid == 0:
            import time

            time.sleep(30)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return len(pids), failed


def _connect(host, port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        return s.recv(16).decode()
    except OSError as err:
        return type(err).__name__
    finally:
        s.close()


@app.function(max_containers=2)
def connect(host, port):
    return _connect(host, port)


@app.function(max_containers=2, block_network=True)
def connect_blocked(host, port):
    return _connect(host, port)


@app.function(max_containers=2)
def privileged_ops():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    results = {}
    results["mount"] = libc.mount(b"tmpfs", b"/mnt", b"tmpfs", 0, None) == 0
    results["unshare_user"] = libc.unshare(0x10000000) == 0
    try:
        os.chown("/tmp", 1000, 1000)
        results["chown"] = True
    except OSError:
        results["chown"] = False
    with open("/proc/self/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    results["cap_eff"] = status["CapEff"].strip()
    results["no_new_privs"] = status.get("NoNewPrivs", "absent").strip()  # gVisor does not show it
    return results


@app.cls(max_containers=1)
@vivace.concurrent(max_inputs=4)
class Lifecycle:
    @vivace.enter()
    def start(self):
        self.started = time.time()

    @vivace.method()
    def hold(self, seconds):
        start = time.time()
        time.sleep(seconds)
        return os.environ["MODAL_TASK_ID"], start, time.time()

    @vivace.exit()
    def stop(self):
        print(f"exit hook ran in {os.environ['MODAL_TASK_ID']}", flush=True)


@app.function(max_containers=2)
def relay(path):
    """Calls another function of the app from inside the container, through the worker socket."""
    return listdir.remote(path)


@app.function(max_containers=1)
@vivace.wsgi_app()
def web_wsgi():
    import socket

    def wsgi(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{socket.gethostname()} {environ['PATH_INFO']}?{environ['QUERY_STRING']}".encode()]

    return wsgi


@app.function(max_containers=1)
@vivace.web_server(18765, startup_timeout=30)
def web_files():
    import subprocess
    import sys
    import tempfile

    root = tempfile.mkdtemp()
    with open(f"{root}/index.txt", "w") as f:
        f.write("from inside\n")
    subprocess.Popen(
        [sys.executable, "-m", "http.server", "18765", "--bind", "127.0.0.1", "--directory", root]
    )


@app.function(max_containers=1)
def burn(seconds):
    """Spin on the CPU for ``seconds`` of CPU time: metering's cgroup accounting must see it."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return os.environ["VIVACE_TASK_ID"], time.process_time() - start
