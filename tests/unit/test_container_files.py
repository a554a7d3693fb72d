"""A dead container's files go with it, its socket's directory too when that lived outside the worker's
directory (a short path: unix socket paths are limited to 107 bytes)."""

from vivace.worker.agent import remove_container_files
from vivace.worker.supervisor import socket_path_for


def test_a_short_socket_directory_goes_with_its_container(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "containers" / "ta-0123456789abcdef0123"
    (deep / "upper").mkdir(parents=True)
    sock = socket_path_for(deep, deep.name)
    assert not sock.is_relative_to(deep)  # too long to live beside it
    sock.parent.mkdir(parents=True)
    sock.write_text("")
    remove_container_files(deep)
    assert not deep.exists() and not sock.parent.exists()


def test_a_socket_beside_its_container_goes_with_the_directory(tmp_path):
    cdir = tmp_path / "containers" / "ta-1"
    (cdir / "sock").mkdir(parents=True)
    assert socket_path_for(cdir, "ta-1").parent == cdir / "sock"
    remove_container_files(cdir)
    assert not cdir.exists()
