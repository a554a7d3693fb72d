"""Throwaway PostgreSQL servers for tests.

``PostgresServer`` runs ``initdb`` into a fresh temporary directory, starts a ``postgres`` postmaster
listening only on ``127.0.0.1`` (on a free port) and on a unix socket inside that directory, waits until
it accepts connections, and creates the database ``vivace_test``. ``stop()`` does an immediate shutdown
(``SIGQUIT``; ``SIGKILL`` of the postmaster and its children if that hangs) and deletes the directory.

    with PostgresServer() as pg:
        conn = psycopg.connect(pg.dsn)
        fresh_dsn = create_database(pg.dsn, "test_something")

Details:

* Binaries are taken from Debian's ``/usr/lib/postgresql/<highest version>/bin``, or from wherever
  ``initdb`` is on ``PATH`` (see ``find_postgres_bin``). Install them with ``apt-get install postgresql``
  (``.ci/install-postgres.sh`` does that).
* ``initdb`` and ``postgres`` refuse to run as root. When the current process is root they run as the
  ``postgres`` system user (created by the Debian package) and the temporary directory is chowned to it;
  otherwise they run as the current user.
* Durability is switched off (``fsync``, ``synchronous_commit``, ``full_page_writes``): the data is thrown
  away anyway. Authentication is ``trust`` for the superuser ``postgres``.
* The postmaster is a direct child process (in its own session, away from the terminal's signals), so
  nothing is daemonised and nothing outlives ``stop()``. ``stop()`` is idempotent, is safe after a failed
  ``start()``, and is registered with ``atexit`` as a last resort.

Only ``create_database`` needs ``psycopg``; it is imported lazily.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["PostgresServer", "create_database", "find_postgres_bin"]

_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_INSTALL_HINT = "install PostgreSQL with `apt-get install postgresql` (or run .ci/install-postgres.sh)"
_SYSTEM_USER = "postgres"
_SUPERUSER = "postgres"
_DATABASE = "vivace_test"
_LOG_TAIL_CHARS = 4000
_PORT_ATTEMPTS = 3


class _PortTaken(Exception):
    pass


def _has_server_binaries(bin_dir: Path) -> bool:
    return (bin_dir / "initdb").is_file() and (bin_dir / "postgres").is_file()


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (-1,)


def find_postgres_bin() -> Path | None:
    """Return the directory holding ``initdb`` and ``postgres``, or ``None`` if there is none.

    Prefers Debian's ``/usr/lib/postgresql/<highest version>/bin``, then the directory of ``initdb`` on
    ``PATH`` (with symlinks resolved, since Debian's ``PATH`` entries are wrappers or links).
    """
    if _DEBIAN_ROOT.is_dir():
        candidates = sorted(
            (entry / "bin" for entry in _DEBIAN_ROOT.iterdir() if _has_server_binaries(entry / "bin")),
            key=lambda bin_dir: _version_key(bin_dir.parent),
            reverse=True,
        )
        if candidates:
            return candidates[0]
    initdb = shutil.which("initdb")
    if initdb is None:
        return None
    for bin_dir in (Path(initdb).resolve().parent, Path(initdb).parent):
        if _has_server_binaries(bin_dir):
            return bin_dir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _traversable_by_others(path: Path) -> bool:
    """Whether every directory from ``/`` down to ``path`` can be entered by any user."""
    return all(os.stat(directory).st_mode & stat.S_IXOTH for directory in (path, *path.parents))


def _children(pid: int) -> list[int]:
    """Pids of the direct children of ``pid``, from Linux's ``/proc`` (empty elsewhere)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat_line = (entry / "stat").read_text()
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                if int(stat_line[stat_line.rindex(")") + 2 :].split()[1]) == pid:
                    children.append(int(entry.name))
    return children


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return text[-_LOG_TAIL_CHARS:] or "(server log is empty)"


def _dsn(host: str, port: int, user: str, database: str) -> str:
    return f"postgresql://{quote(user, safe='')}@{host}:{port}/{quote(database, safe='')}"


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


def create_database(dsn: str, name: str) -> str:
    """Create the empty database ``name`` on the server of ``dsn`` and return a DSN for it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _with_database(dsn, name)


class PostgresServer:
    """A PostgreSQL server in a temporary directory, for the length of a test (or session)."""

    def __init__(self, *, start_timeout: float = 30.0, stop_timeout: float = 10.0) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.bin_dir: Path | None = None
        self.base_dir: Path | None = None
        self.port: int | None = None
        self.dsn: str = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._user: pwd.struct_passwd | None = None

    # -- paths -----------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.base_dir is None:
            raise RuntimeError("PostgresServer is not started")
        return self.base_dir / name

    @property
    def data_dir(self) -> Path:
        return self._path("data")

    @property
    def socket_dir(self) -> Path:
        return self._path("sock")

    @property
    def log_path(self) -> Path:
        return self._path("postgres.log")

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """Initialise, start and wait for the server; on any failure clean up and raise RuntimeError."""
        if self._proc is not None:
            raise RuntimeError("PostgresServer is already started")
        bin_dir = find_postgres_bin()
        if bin_dir is None:
            raise RuntimeError(f"PostgreSQL server binaries (initdb, postgres) not found: {_INSTALL_HINT}")
        self.bin_dir = bin_dir
        atexit.register(self.stop)
        try:
            self._start(bin_dir)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, bin_dir: Path) -> None:
        self._user = self._run_as()
        self.base_dir = Path(tempfile.mkdtemp(prefix="vivace-pg-", dir=self._temp_root()))
        for directory in (self.data_dir, self.socket_dir):
            directory.mkdir(mode=0o700)
        if self._user is not None:
            for directory in (self.base_dir, self.data_dir, self.socket_dir):
                os.chown(directory, self._user.pw_uid, self._user.pw_gid)

        self._check_call(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                _SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            "initdb",
        )

        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.port = port = _free_port()
            self._launch(bin_dir)
            try:
                self._wait_ready(bin_dir)
                break
            except _PortTaken:  # another process took the free port before postgres bound it
                self._proc = None
                if attempt == _PORT_ATTEMPTS:
                    raise RuntimeError(
                        f"postgres could not bind a free port:\n{_tail(self.log_path)}"
                    ) from None
        if (bin_dir / "createdb").is_file():
            self._check_call(
                [
                    str(bin_dir / "createdb"),
                    "-h",
                    str(self.socket_dir),
                    "-p",
                    str(port),
                    "-U",
                    _SUPERUSER,
                    _DATABASE,
                ],
                "createdb",
            )
        else:
            create_database(_dsn("127.0.0.1", port, _SUPERUSER, "postgres"), _DATABASE)
        self.dsn = _dsn("127.0.0.1", port, _SUPERUSER, _DATABASE)

    def _launch(self, bin_dir: Path) -> None:
        assert self.port is not None
        with open(self.log_path, "wb") as log:
            if self._user is not None:
                os.chown(self.log_path, self._user.pw_uid, self._user.pw_gid)
            self._proc = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.socket_dir}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "logging_collector=off",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.base_dir,
                env=self._env(),
                user=self._uid(),
                group=self._gid(),
                extra_groups=self._extra_groups(),
            )

    def _wait_ready(self, bin_dir: Path) -> None:
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + self.start_timeout
        pg_isready = bin_dir / "pg_isready"
        while True:
            code = self._proc.poll()
            if code is not None:
                if "could not bind" in _tail(self.log_path):
                    raise _PortTaken
                raise RuntimeError(
                    f"postgres exited with status {code} during startup; server log:\n{_tail(self.log_path)}"
                )
            if self._is_ready(pg_isready):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres did not accept connections within {self.start_timeout:g}s; "
                    f"server log:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _is_ready(self, pg_isready: Path) -> bool:
        assert self.port is not None
        if pg_isready.is_file():
            result = subprocess.run(
                [
                    str(pg_isready),
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    _SUPERUSER,
                    "-d",
                    "postgres",
                    "-t",
                    "1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            return result.returncode == 0
        import psycopg

        try:
            psycopg.connect(_dsn("127.0.0.1", self.port, _SUPERUSER, "postgres"), connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        """Shut down immediately and remove the temporary directory; idempotent, safe after a failed start."""
        proc, self._proc = self._proc, None
        # SIGQUIT is postgres's immediate shutdown: the postmaster quits its children, waits for them,
        # and exits. If it hangs, SIGKILL it and its children (each child is its own session leader, so
        # a process-group kill would not reach them); pids are only safe to use while it is unreaped.
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                for pid in [proc.pid, *_children(proc.pid)]:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()
        base_dir, self.base_dir = self.base_dir, None
        if base_dir is not None:
            shutil.rmtree(base_dir, ignore_errors=True)
        self.dsn = ""
        self.port = None
        atexit.unregister(self.stop)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _run_as() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(_SYSTEM_USER)
        except KeyError:
            raise RuntimeError(
                f"running as root, but there is no {_SYSTEM_USER!r} system user to run PostgreSQL as: "
                f"{_INSTALL_HINT}"
            ) from None

    def _temp_root(self) -> str:
        root = Path(tempfile.gettempdir())
        if self._user is not None and not _traversable_by_others(root):
            return "/tmp"  # the postgres user must be able to reach its data directory
        return str(root)

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        if self._user is not None:
            env.update(HOME=self._user.pw_dir, USER=self._user.pw_name, LOGNAME=self._user.pw_name)
        return env

    def _uid(self) -> int | None:
        return self._user.pw_uid if self._user is not None else None

    def _gid(self) -> int | None:
        return self._user.pw_gid if self._user is not None else None

    def _extra_groups(self) -> list[int] | None:
        return [] if self._user is not None else None

    def _check_call(self, argv: list[str], what: str) -> None:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
            cwd=self.base_dir,
            env=self._env(),
            user=self._uid(),
            group=self._gid(),
            extra_groups=self._extra_groups(),
        )
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace")[-_LOG_TAIL_CHARS:]
            raise RuntimeError(f"{what} failed with status {result.returncode}:\n{output}")
