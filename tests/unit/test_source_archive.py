"""Source archives from clients are unpacked on workers: only plain files and directories, inside."""

import io
import tarfile

import pytest

from vivace.worker.sources import _safe_members


def _archive(*members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r:gz")


def _file(name, data=b"x = 1\n"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o4777  # setuid bits never survive
    return info, data


def test_plain_files_and_directories_pass_without_special_bits():
    d = tarfile.TarInfo("pkg")
    d.type = tarfile.DIRTYPE
    members = _safe_members(_archive((d, None), _file("pkg/mod.py")))
    assert [m.name for m in members] == ["pkg", "pkg/mod.py"]
    assert all(m.mode & 0o7000 == 0 for m in members)


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape.py", "pkg/../../escape.py"])
def test_paths_outside_the_target_are_refused(name):
    with pytest.raises(ValueError, match="refusing"):
        _safe_members(_archive(_file(name)))


def test_links_are_refused():
    link = tarfile.TarInfo("pkg/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/shadow"
    with pytest.raises(ValueError, match="refusing"):
        _safe_members(_archive((link, None)))
