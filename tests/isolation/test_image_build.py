"""Image builds on a worker (``vivace.worker.build``): the debian_slim base, build steps in real crun and
runc containers, and the layers (upper directories) they leave: what the step changed, and nothing of
the build's own context (CA bundle, uv, proxy settings, mount points).

Needs root, crun and debootstrap (fails under CI=true without them, skips elsewhere) and the Debian and
PyPI registries. The bases are bootstrapped once into /var/cache/vivace/test-images (kept across runs,
like scripts/vm's image): the first run pays ~40-50 s per base."""

import contextlib
import fcntl
import os
import shlex
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from vivace.exception import ImageBuildError
from vivace.worker.build import (
    BASE_RECIPE,
    BUILD_DIR,
    BuildStepError,
    build_debian_slim,
    commands_for,
    debian_suite,
    find_uv,
    reconcile_builds,
    run_step,
)
from vivace.worker.cgroups import detect
from vivace.worker.runtimes.oci import mounted_under

from .conftest import require_runtime

pytestmark = pytest.mark.timeout(300)  # a first run bootstraps the bases (~50 s each on a busy host)

CACHE = Path(os.environ.get("VIVACE_TEST_IMAGES", "/var/cache/vivace/test-images"))
PIP_SIX = {
    "kind": "pip_install",
    "packages": ["six"],
    "index_url": None,
    "extra_index_url": None,
    "pre": False,
}


def cached_base(python_version: str) -> Path:
    """The debian_slim base for ``python_version``, bootstrapped on first use (one builder at a time)."""
    require_runtime("crun")
    require_runtime("debootstrap")
    dest = CACHE / f"debian-slim-{python_version}-r{BASE_RECIPE}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dest.exists():
            build_debian_slim(python_version, dest, log=lambda line: None)
    return dest


@pytest.fixture(scope="session")
def base():
    return cached_base("3.11")


@pytest.fixture(scope="session")
def key():
    """A worker key of this session's own: its cgroups and runtime state are told apart from others'."""
    key = "tb" + uuid.uuid4().hex[:8]
    yield key
    for root in detect().roots():  # the worker's reconciliation removes these; here the test does
        with contextlib.suppress(OSError):
            (root / "vivace" / key).rmdir()
    shutil.rmtree(Path("/run/vivace") / key, ignore_errors=True)


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("uv-cache")


class Build:
    """Runs steps for a test and keeps their log lines."""

    def __init__(self, key, uv_cache, root):
        self.key, self.uv_cache, self.root = key, uv_cache, root
        self.log: list[str] = []

    def __call__(self, lowers, step, name=None, **kw):
        commands = step if isinstance(step, list) else commands_for(step)
        upper = self.root / (name or f"layer-{uuid.uuid4().hex[:6]}")
        kw.setdefault("env", {})
        kw.setdefault("workdir", "/")
        run_step(lowers, upper, commands, log=self.log.append, key=self.key, uv_cache=self.uv_cache,
                 step=None if isinstance(step, list) else step, **kw)  # fmt: skip
        return upper


@pytest.fixture
def build(key, uv_cache, tmp_path):
    return Build(key, uv_cache, tmp_path)


@pytest.fixture(scope="module")
def chain(base, key, uv_cache, tmp_path_factory):
    """base -> apt_install jq -> pip_install six: the layers and the log."""
    b = Build(key, uv_cache, tmp_path_factory.mktemp("chain"))
    apt = b([base], {"kind": "apt_install", "packages": ["jq"]}, "apt")
    pip = b([apt, base], PIP_SIX, "pip")
    return {"base": base, "apt": apt, "pip": pip, "log": b.log}


def entries(upper: Path) -> list[str]:
    return sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))


def footprint(key: str) -> dict[str, list[str]]:
    """What a build step may leave on the host: none of it after a step."""
    run = Path("/run/vivace") / key
    netns = Path("/run/netns")
    chains = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    return {
        "mounts": [str(m) for m in mounted_under(run)],
        "scratch": [p.name for p in run.glob("build-*")],
        "runtime state": [p.name for p in run.glob("*/build-*")],
        "cgroups": [str(d) for root in detect().roots() for d in (root / "vivace" / key).glob("build-*")],
        "netns": [p.name for p in netns.glob("vvbx*")] if netns.is_dir() else [],
        "iptables": [
            line for line in chains.splitlines() if "VIVACE-IN-bx" in line or "VIVACE-FWD-bx" in line
        ],
    }


NOTHING = {k: [] for k in ("mounts", "scratch", "runtime state", "cgroups", "netns", "iptables")}


# -- the base ------------------------------------------------------------------------------------


def test_debian_slim_behaves_like_python_slim(base):
    assert os.readlink(base / "usr/local/bin/python") == "/usr/bin/python3"
    assert os.readlink(base / "usr/local/bin/pip") == "/usr/bin/pip3"
    assert not list(base.glob("usr/lib/python3*/EXTERNALLY-MANAGED"))
    assert list(base.glob("usr/lib/python3.11/__pycache__/os.cpython-311.pyc"))  # Debian compiles it
    assert not list((base / "var/lib/apt/lists").iterdir())
    assert not list(base.glob("var/cache/apt/archives/*.deb"))
    assert (base / "etc/resolv.conf").read_text() == ""  # nothing of the host's
    assert "bookworm-security" in (base / "etc/apt/sources.list.d/debian.sources").read_text()


@pytest.mark.parametrize(
    ("runtime", "userns"),
    [("crun", None), ("crun", False), ("runc", None)],
    ids=["crun", "crun-no-userns", "runc"],
)
def test_step_runs_python_and_changes_nothing_else(base, build, runtime, userns):
    require_runtime(runtime)
    upper = build([base], ["python --version", "pip --version", "cat /proc/self/status"], runtime=runtime,
                  userns=userns)  # fmt: skip
    assert "Python 3.11" in "\n".join(build.log)
    caps = next(line.split()[1] for line in build.log if line.startswith("CapEff:"))
    assert (
        int(caps, 16) == 0x800400FB
    )  # CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SYS_CHROOT SETFCAP
    # the step wrote nothing: its layer is empty, mount points and build-only files included
    assert entries(upper) == []


def test_trixie_base_has_python_313(build):
    trixie = cached_base("3.13")
    build([trixie], ["python --version"])
    assert any(line.startswith("Python 3.13") for line in build.log)


def test_unsupported_python_names_the_supported_ones(tmp_path):
    with pytest.raises(ImageBuildError, match=r"3\.11 \(bookworm\), 3\.13 \(trixie\)"):
        debian_suite("3.12")
    with pytest.raises(ImageBuildError, match=r"3\.12"):
        build_debian_slim("3.12", tmp_path / "base", log=print)
    assert not (tmp_path / "base").exists()


def test_failed_bootstrap_leaves_nothing(tmp_path):
    require_runtime("debootstrap")
    lines = []
    with pytest.raises(ImageBuildError, match="debootstrap of bookworm failed"):  # a mirror on loopback: none
        build_debian_slim("3.11", tmp_path / "base", log=lines.append, mirror="http://127.0.0.1:9/debian")
    assert lines
    assert list(tmp_path.iterdir()) == []


# -- steps and their layers ----------------------------------------------------------------------


def test_apt_install_then_run_it(chain, build):
    apt = chain["apt"]
    assert (apt / "usr/bin/jq").is_file()
    assert (apt / "usr/bin/jq").stat().st_uid == 0  # root in the image, whatever the build's user namespace
    assert not list(apt.glob("var/lib/apt/lists/*"))
    assert not list(apt.glob("var/cache/apt/archives/*.deb"))
    build([apt, chain["base"]], ["echo '{\"a\": 41}' | jq '.a + 1'"])
    assert "42" in build.log


def test_pip_install_is_compiled_and_importable_in_a_later_step(chain, build):
    pip = chain["pip"]
    site = pip / "usr/local/lib/python3.11/dist-packages"
    assert (site / "six.py").is_file()
    assert list(site.glob("__pycache__/six.cpython-311.pyc"))
    upper = build([pip, chain["apt"], chain["base"]],
                  ["python -c 'import six; print(six.__file__, six.__cached__)'", "jq --version"])  # fmt: skip
    assert "/usr/local/lib/python3.11/dist-packages/six.py" in "\n".join(build.log)
    assert entries(upper) == []  # the bytecode was there: importing wrote nothing


def test_build_context_never_reaches_the_layer(chain, build, tmp_path):
    pip = chain["pip"]
    assert not (pip / "run").exists() and not (pip / "tmp").exists()
    assert not [p for p in pip.rglob("*") if p.name in ("ca.pem", "uv") or "uv-cache" in p.name]
    for p in pip.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert BUILD_DIR.encode() not in p.read_bytes(), p
    # the step sees the worker's proxy and CA settings; its layer keeps none of them
    ca = tmp_path / "corp-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n")
    host_env = {"https_proxy": "http://proxy.invalid:3128", "no_proxy": "localhost", "SSL_CERT_FILE": str(ca),
                "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}  # fmt: skip
    upper = build([chain["base"]], [
        'test "$https_proxy" = http://proxy.invalid:3128 && test "$no_proxy" = localhost',
        'grep -q "not really" "$SSL_CERT_FILE" && test "$PIP_CERT" = "$SSL_CERT_FILE"',
        'test "$REQUESTS_CA_BUNDLE" = "$SSL_CERT_FILE" && test "${UV_SYSTEM_CERTS:-$UV_NATIVE_TLS}" = 1',
        "uv --version",
        "mktemp",  # temporary files of the step's tools go outside the layer too
    ], host_env=host_env)  # fmt: skip
    assert any(line.startswith("uv ") for line in build.log)
    assert entries(upper) == []


def test_deletion_is_a_whiteout_and_a_missing_mount_point_is_not_the_steps(base, build):
    upper = build([base], ["rm /etc/issue.net /etc/resolv.conf"], network=False)  # else resolv.conf is bound
    for name in ("issue.net", "resolv.conf"):
        st = (upper / "etc" / name).lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and st.st_uid == 0
    # the next step's image has no /etc/resolv.conf: the runtime creates one to bind the build's own on,
    # and removes it after (with the /etc that overlayfs copied up to hold it)
    later = build([upper, base], ["test -s /etc/resolv.conf"])
    assert entries(later) == []


def test_failing_command_says_which_and_its_exit_code(base, build, key):
    with pytest.raises(BuildStepError) as info:
        build(
            [base],
            {"kind": "run_commands", "commands": ["echo before", "echo oops >&2; exit 3", "echo never"]},
        )
    err = info.value
    assert err.exit_code == 3 and err.command == "echo oops >&2; exit 3"
    assert "`echo oops >&2; exit 3` exited with code 3" in str(err) and "run_commands step" in str(err)
    assert err.log_tail == ["$ echo before", "before", "$ echo oops >&2; exit 3", "oops"]
    assert "$ echo never" not in build.log
    assert footprint(key) == NOTHING


def test_timeout_stops_the_step(base, build, key):
    with pytest.raises(BuildStepError, match="did not finish within 1 s") as info:
        build([base], ["sleep 60 & sleep 60"], timeout=1)
    assert info.value.exit_code is None
    assert footprint(key) == NOTHING


def test_build_reaches_no_service_of_the_host(base, build, host_listener):
    # the gateway of the build's namespace is the host: a service listening on all addresses
    probe = (
        "import socket\n"
        "gw = next(l.split()[2] for l in open('/proc/net/route') if l.split()[1] == '00000000')\n"
        "gw = socket.inet_ntoa(bytes.fromhex(gw)[::-1])\n"
        "s = socket.socket(); s.settimeout(2)\n"
        f"try:\n    s.connect((gw, {host_listener})); print('reached')\n"
        "except OSError as err:\n    print('blocked', err)\n"
    )
    build([base], [f"python3 -c {shlex.quote(probe)}"])
    assert any(line.startswith("blocked") for line in build.log), build.log


def test_reconcile_after_the_worker_died_mid_step(base, key, tmp_path):
    script = (
        "from pathlib import Path\nfrom vivace.worker.build import run_step\n"
        f"run_step([Path({str(base)!r})], Path({str(tmp_path / 'upper')!r}), ['echo started; sleep 300'],"
        f" env={{}}, workdir='/', log=print, key={key!r})\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert worker.stdout is not None
    for line in worker.stdout:
        if line.strip() == "started":
            break
    worker.kill()
    worker.wait()
    worker.stdout.close()
    left = footprint(key)
    assert left["mounts"] and left["cgroups"] and left["netns"] and left["scratch"]
    removed = reconcile_builds(key)
    assert any(r.startswith("network of build-") for r in removed)
    assert footprint(key) == NOTHING


def test_nothing_left_behind(chain, key, tmp_path):
    assert footprint(key) == NOTHING
    for layer in ("apt", "pip"):  # overlayfs's work directory and the build's TMPDIR are gone
        assert not [p.name for p in chain[layer].parent.iterdir() if ".work-" in p.name or ".tmp-" in p.name]


# -- specs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["numpy; rm -rf /", "numpy && rm -rf /", "$(reboot)", "six`id`", "--index-url=http://evil.invalid",
     "six; python_version > '3' or __import__('os')", "numpy\n"],
)  # fmt: skip
def test_bad_pip_specs_are_rejected_before_anything_runs(spec):
    with pytest.raises(ImageBuildError):
        commands_for({**PIP_SIX, "packages": ["six", spec]})


@pytest.mark.parametrize("spec", ["jq; rm -rf /", "-oDebug::pkgProblemResolver=1", "jq$(id)", "JQ"])
def test_bad_apt_packages_are_rejected(spec):
    with pytest.raises(ImageBuildError):
        commands_for({"kind": "apt_install", "packages": [spec]})


def test_bad_urls_and_options_are_rejected():
    with pytest.raises(ImageBuildError, match="index_url"):
        commands_for({**PIP_SIX, "index_url": "https://x.invalid/simple; rm -rf /"})
    with pytest.raises(ImageBuildError, match="extra_options"):
        commands_for({**PIP_SIX, "extra_options": "--no-deps $(id)"})
    with pytest.raises(ImageBuildError, match="runs no commands"):
        commands_for({"kind": "env", "vars": {"A": "1"}})


def test_good_specs_are_quoted():
    specs = ["numpy>=1.26,<2", "requests[socks]==2.32.3", "torch==2.3; sys_platform == 'linux'",
             "pkg @ https://example.invalid/pkg-1.0-py3-none-any.whl"]  # fmt: skip
    (cmd,) = commands_for({**PIP_SIX, "packages": specs, "pre": True, "index_url": "https://pypi.invalid/simple",
                           "extra_options": "--no-deps"})  # fmt: skip
    assert cmd.startswith(
        f"{BUILD_DIR}/bin/uv pip install --system --break-system-packages --compile-bytecode "
    )
    assert "'numpy>=1.26,<2'" in cmd and "'torch==2.3; sys_platform == '\"'\"'linux'\"'\"''" in cmd
    assert (
        "--prerelease allow" in cmd
        and "--index-url https://pypi.invalid/simple" in cmd
        and "--no-deps" in cmd
    )
    apt = commands_for({"kind": "apt_install", "packages": ["jq", "libpq-dev=15.8-0+deb12u1"]})
    assert apt[1].endswith("--no-install-recommends jq libpq-dev=15.8-0+deb12u1")
    assert apt[2] == "apt-get clean && rm -rf /var/lib/apt/lists/*"


def test_uv_launcher_scripts_are_skipped(tmp_path):
    shim = tmp_path / "uv"
    shim.write_text('#!/bin/sh\nexec real-uv "$@"\n')
    shim.chmod(0o755)
    assert find_uv({"PATH": str(tmp_path), "HOME": str(tmp_path)}) is None
    real = find_uv()  # the worker's (the pip steps above ran it)
    assert real is not None and find_uv({"VIVACE_UV": str(real), "PATH": str(tmp_path)}) == real
