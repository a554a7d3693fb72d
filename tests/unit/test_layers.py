"""Layers: OCI layer tars <-> overlayfs lower/upper directories (vivace.worker.layers).

Whiteouts, opaque directories and ownership need root; these tests run as root in CI and fail there
rather than skip. The overlay test mounts in a private mount namespace (``unshare -m``), so nothing
is left mounted on the machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from vivace.worker.layers import OPAQUE_XATTR, LayerError, pack_layer, unpack_layer, unpack_layer_atomic

pytestmark = pytest.mark.timeout(60)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_root() -> None:
    if os.geteuid() == 0:
        return
    if in_ci():
        pytest.fail("CI=true but these layer tests need root (whiteouts, trusted.* xattrs, owners)")
    pytest.skip("needs root (whiteouts, trusted.* xattrs, owners)")


def require_zstd() -> None:
    if shutil.which("zstd") is not None:
        return
    if in_ci():
        pytest.fail("CI=true but the zstd command is missing (apt-get install zstd)")
    pytest.skip("the zstd command is missing (apt-get install zstd)")


# ----------------------------------------------------------------------------------------- helpers


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object) -> tuple:
    return (name, kind, data, attrs)


def make_tar(entries: list[tuple], compression: str = "gzip") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, attrs in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.mtime = 1_600_000_000
            for key, value in attrs.items():
                setattr(info, key, value)
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return compress(raw.getvalue(), compression)


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        require_zstd()
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    return data


def unpack_bytes(blob: bytes, dest: Path) -> None:
    unpack_layer(io.BytesIO(blob), dest)


def tree(root: Path) -> dict[str, tuple]:
    """Everything observable about a directory tree (what overlay would show of it)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                content: object = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode):
                content = ("chr", os.major(st.st_rdev), os.minor(st.st_rdev))
            elif stat.S_ISDIR(st.st_mode):
                content = ("dir", os.getxattr(path, OPAQUE_XATTR) if _has_xattr(path, OPAQUE_XATTR) else None)
            else:
                content = "other"
            mtime = int(st.st_mtime) if not stat.S_ISCHR(st.st_mode) else None
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                mtime,
                content,
            )
    return out


def _has_xattr(path: Path, name: str) -> bool:
    try:
        os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return False
    return True


def only_child(parent: Path, name: str) -> None:
    assert sorted(p.name for p in parent.iterdir()) == [name], "something was written outside dest"


# ---------------------------------------------------------------------------------------- unpacking


def test_unpack_keeps_modes_owners_times_links_and_skips_devices(tmp_path: Path) -> None:
    require_root()
    blob = make_tar(
        [
            entry("./", tarfile.DIRTYPE, mode=0o755),
            entry("etc/", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1001, mtime=1_500_000_000),
            entry("etc/conf", data=b"x=1\n", mode=0o640, uid=1234, gid=5678, mtime=1_400_000_000),
            entry("usr/bin/tool", data=b"#!/bin/sh\n", mode=0o4755),  # parents implied, setuid kept
            entry("etc/link", tarfile.SYMTYPE, linkname="conf", uid=7, gid=8),
            entry("etc/hard", tarfile.LNKTYPE, linkname="etc/conf"),
            entry("run/pipe", tarfile.FIFOTYPE, mode=0o620),
            entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
            entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
        ]
    )
    dest = tmp_path / "layer"
    unpack_bytes(blob, dest)
    conf = (dest / "etc/conf").lstat()
    assert (dest / "etc/conf").read_bytes() == b"x=1\n"
    assert (stat.S_IMODE(conf.st_mode), conf.st_uid, conf.st_gid, int(conf.st_mtime)) == (
        0o640,
        1234,
        5678,
        1_400_000_000,
    )
    etc = (dest / "etc").lstat()
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, etc.st_gid, int(etc.st_mtime)) == (
        0o750,
        1000,
        1001,
        1_500_000_000,
    )
    assert stat.S_IMODE((dest / "usr/bin/tool").lstat().st_mode) == 0o4755
    assert (dest / "usr/bin").is_dir()
    assert os.readlink(dest / "etc/link") == "conf"
    assert ((dest / "etc/link").lstat().st_uid, (dest / "etc/link").lstat().st_gid) == (7, 8)
    assert (dest / "etc/hard").lstat().st_ino == conf.st_ino
    assert stat.S_ISFIFO((dest / "run/pipe").lstat().st_mode)
    assert stat.S_IMODE((dest / "run/pipe").lstat().st_mode) == 0o620
    assert sorted(os.listdir(dest / "dev")) == []


def test_whiteouts_and_opaque_dirs_become_overlay_form(tmp_path: Path) -> None:
    require_root()
    blob = make_tar(
        [
            entry(".wh.gone"),
            entry("keep/", tarfile.DIRTYPE),
            entry("keep/.wh.old-dir"),
            entry("opaque/", tarfile.DIRTYPE, mode=0o700),
            entry("opaque/.wh..wh..opq"),
            entry("opaque/new", data=b"new"),
            entry("implied/.wh..wh..opq"),  # parent not listed first: created, then marked
            entry("aufs/.wh..wh.plnk", tarfile.DIRTYPE),  # aufs metadata: ignored
        ]
    )
    dest = tmp_path / "layer"
    unpack_bytes(blob, dest)
    gone = (dest / "gone").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
    assert stat.S_ISCHR((dest / "keep/old-dir").lstat().st_mode)
    assert os.getxattr(dest / "opaque", OPAQUE_XATTR) == b"y"
    assert os.getxattr(dest / "implied", OPAQUE_XATTR) == b"y"
    assert not _has_xattr(dest / "keep", OPAQUE_XATTR)
    assert stat.S_IMODE((dest / "opaque").lstat().st_mode) == 0o700
    assert (dest / "opaque/new").read_bytes() == b"new"
    assert not (dest / "opaque/.wh..wh..opq").exists()
    assert sorted(os.listdir(dest / "aufs")) == []


def test_a_whiteout_never_hides_an_entry_of_its_own_layer(tmp_path: Path) -> None:
    require_root()
    blob = make_tar(
        [
            entry("file", data=b"mine"),
            entry(".wh.file"),  # applies to lower layers: the file stays
            entry("dir/", tarfile.DIRTYPE),
            entry(".wh.dir"),  # a directory stays too, and hides the lower one's content
            entry(".wh.again"),
            entry("again/", tarfile.DIRTYPE),  # recreated after its whiteout: opaque
            entry("again/x", data=b"x"),
        ]
    )
    dest = tmp_path / "layer"
    unpack_bytes(blob, dest)
    assert (dest / "file").read_bytes() == b"mine"
    assert os.getxattr(dest / "dir", OPAQUE_XATTR) == b"y"
    assert os.getxattr(dest / "again", OPAQUE_XATTR) == b"y"
    assert (dest / "again/x").read_bytes() == b"x"


@pytest.mark.parametrize("compression", ["plain", "gzip", "zstd"])
def test_compression_is_detected_by_magic(tmp_path: Path, compression: str) -> None:
    blob = make_tar([entry("a/b.txt", data=b"hello " * 1000), entry("c", data=b"")], compression)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    unpack_layer(path, tmp_path / "from-path")
    unpack_bytes(blob, tmp_path / "from-stream")
    for dest in (tmp_path / "from-path", tmp_path / "from-stream"):
        assert (dest / "a/b.txt").read_bytes() == b"hello " * 1000
        assert (dest / "c").read_bytes() == b""


def test_zstd_without_the_tool_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = make_tar([entry("a")], "zstd")
    monkeypatch.setattr("vivace.worker.layers.shutil.which", lambda name: None)
    with pytest.raises(LayerError, match="zstd"):
        unpack_bytes(blob, tmp_path / "layer")


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_corrupt_or_truncated_blobs_are_rejected(tmp_path: Path, compression: str) -> None:
    blob = make_tar([entry("a", data=os.urandom(200_000))], compression)
    with pytest.raises(LayerError):
        unpack_bytes(blob[: len(blob) // 2], tmp_path / "truncated")
    garbled = blob[:20] + bytes(b ^ 0xFF for b in blob[20:60]) + blob[60:]
    with pytest.raises(LayerError):
        unpack_bytes(garbled, tmp_path / "garbled")
    with pytest.raises(LayerError):
        unpack_bytes(b"not a tar at all", tmp_path / "garbage")


def test_dest_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest/x").write_text("x")
    with pytest.raises(LayerError, match="not empty"):
        unpack_bytes(make_tar([entry("a")]), tmp_path / "dest")


# --------------------------------------------------------------------------------------- traversal


@pytest.mark.parametrize(
    "entries",
    [
        [entry("../escaped", data=b"x")],
        [entry("a/../../escaped", data=b"x")],
        [entry("/escaped", data=b"x")],
        [entry("ok", data=b"x"), entry("../escaped", tarfile.LNKTYPE, linkname="ok")],
        [entry("link", tarfile.LNKTYPE, linkname="../outside/secret")],
        [entry("link", tarfile.LNKTYPE, linkname="/etc/passwd")],
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "hardlink-name", "hardlink-target", "hardlink-absolute"],
)
def test_paths_leaving_the_layer_are_rejected(tmp_path: Path, entries: list[tuple]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_text("s")
    with pytest.raises(LayerError):
        unpack_bytes(make_tar(entries), work / "dest")
    only_child(work, "dest")
    assert not (tmp_path / "escaped").exists()
    assert sorted(os.listdir(tmp_path / "outside")) == ["secret"]


@pytest.mark.parametrize("target", ["ABS", "..", "../..", "sub/../.."])
def test_entries_under_a_symlink_are_rejected(tmp_path: Path, target: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    linkname = str(outside) if target == "ABS" else target
    blob = make_tar(
        [
            entry("sub/", tarfile.DIRTYPE),
            entry("link", tarfile.SYMTYPE, linkname=linkname),
            entry("link/pwned", data=b"x"),
        ]
    )
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(LayerError, match="symlink"):
        unpack_bytes(blob, work / "dest")
    assert sorted(os.listdir(outside)) == []
    only_child(work, "dest")
    assert not (tmp_path / "pwned").exists()


def test_a_directory_replaced_by_a_symlink_is_not_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    blob = make_tar(
        [
            entry("d/", tarfile.DIRTYPE),
            entry("d/first", data=b"1"),
            entry("d", tarfile.SYMTYPE, linkname=str(outside)),  # later entries replace earlier ones
            entry("d/second", data=b"2"),
        ]
    )
    with pytest.raises(LayerError, match="symlink"):
        unpack_bytes(blob, tmp_path / "dest")
    assert sorted(os.listdir(outside)) == []


def test_symlinks_themselves_may_point_anywhere(tmp_path: Path) -> None:
    blob = make_tar(
        [
            entry("etc/alt", tarfile.SYMTYPE, linkname="/etc/passwd"),
            entry("up", tarfile.SYMTYPE, linkname="../.."),
        ]
    )
    unpack_bytes(blob, tmp_path / "dest")
    assert os.readlink(tmp_path / "dest/etc/alt") == "/etc/passwd"
    assert os.readlink(tmp_path / "dest/up") == "../.."


# ------------------------------------------------------------------------------------------ packing


def make_upper(root: Path) -> None:
    """An overlay upper directory as a build step would leave it."""
    root.mkdir()
    (root / "etc").mkdir(mode=0o755)
    (root / "etc/conf").write_bytes(b"conf")
    os.chmod(root / "etc/conf", 0o640)
    (root / "etc/hard").hardlink_to(root / "etc/conf")
    (root / "etc/link").symlink_to("conf")
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin/tool", 0o4755)
    os.mkfifo(root / "fifo")
    (root / "data").mkdir()
    (root / "data/big").write_bytes(bytes(range(256)) * 4096)
    os.setxattr(root / "data/big", "user.origin", b"vivace\xff")
    if os.geteuid() == 0:
        os.chown(root / "etc/conf", 1234, 5678)
        os.chown(root / "etc/link", 7, 8, follow_symlinks=False)
        os.mknod(root / "deleted", stat.S_IFCHR, os.makedev(0, 0))
        os.mknod(root / "etc/deleted-dir", stat.S_IFCHR, os.makedev(0, 0))
        (root / "opaque").mkdir()
        os.setxattr(root / "opaque", OPAQUE_XATTR, b"y")
        (root / "opaque/fresh").write_bytes(b"fresh")
        os.mknod(root / "etc/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a device: left out
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, (1_600_000_000, 1_600_000_000), follow_symlinks=False)


def packed(upper: Path) -> tuple[bytes, str]:
    out = io.BytesIO()
    digest = pack_layer(upper, out)
    return out.getvalue(), digest


def test_pack_writes_oci_whiteouts_sorted_without_names(tmp_path: Path) -> None:
    require_root()
    make_upper(tmp_path / "upper")
    data, digest = packed(tmp_path / "upper")
    assert digest == hashlib.sha256(data).hexdigest()
    assert data[4:8] == b"\0\0\0\0", "the gzip header carries no timestamp"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == [
        "bin",
        "bin/tool",
        "data",
        "data/big",
        ".wh.deleted",
        "etc",
        "etc/conf",
        "etc/.wh.deleted-dir",
        "etc/hard",
        "etc/link",
        "fifo",
        "opaque",
        "opaque/.wh..wh..opq",
        "opaque/fresh",
    ]
    by_name = {m.name: m for m in members}
    assert all(m.uname == "" and m.gname == "" for m in members)
    assert (by_name["etc/conf"].uid, by_name["etc/conf"].gid, by_name["etc/conf"].mode) == (1234, 5678, 0o640)
    assert by_name["etc/hard"].islnk() and by_name["etc/hard"].linkname == "etc/conf"
    assert by_name["etc/link"].issym() and by_name["etc/link"].linkname == "conf"
    assert by_name["bin/tool"].mode == 0o4755
    assert (
        by_name["data/big"].pax_headers["SCHILY.xattr.user.origin"].encode("utf-8", "surrogateescape")
        == b"vivace\xff"
    )
    assert all(m.mtime == 1_600_000_000 for m in members)


def test_pack_then_unpack_round_trips(tmp_path: Path) -> None:
    require_root()
    make_upper(tmp_path / "upper")
    data, _ = packed(tmp_path / "upper")
    unpack_bytes(data, tmp_path / "lower")
    expected = tree(tmp_path / "upper")
    del expected["etc/null"]  # devices are not part of a layer
    assert tree(tmp_path / "lower") == expected
    assert os.getxattr(tmp_path / "lower/data/big", "user.origin") == b"vivace\xff"


def test_pack_is_deterministic(tmp_path: Path) -> None:
    make_upper(tmp_path / "a")
    first, digest = packed(tmp_path / "a")
    assert packed(tmp_path / "a") == (first, digest)
    # the same tree made again: other inode numbers, other creation times
    for i in range(20):
        (tmp_path / f"junk{i}").write_text("x")
    make_upper(tmp_path / "b")
    assert packed(tmp_path / "b") == (first, digest)


def test_pack_refuses_overlay_redirects(tmp_path: Path) -> None:
    require_root()
    (tmp_path / "upper/moved").mkdir(parents=True)
    os.setxattr(tmp_path / "upper/moved", "trusted.overlay.redirect", b"/old")
    with pytest.raises(LayerError, match="redirect_dir=off"):
        packed(tmp_path / "upper")


# ------------------------------------------------------------------------------------------- atomic


class GatedReader(io.RawIOBase):
    """A blob stream whose first read waits for the other unpack to start too."""

    def __init__(self, data: bytes, barrier: threading.Barrier) -> None:
        self._data = io.BytesIO(data)
        self._barrier = barrier
        self._waited = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if not self._waited:
            self._waited = True
            self._barrier.wait(timeout=10)
        data = self._data.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def test_atomic_unpack_caches_by_key_and_is_read_only(tmp_path: Path) -> None:
    blob = make_tar([entry("a", data=b"1")])
    cache = tmp_path / "layers"
    path = unpack_layer_atomic(io.BytesIO(blob), cache, "sha256-abc")
    assert path == cache / "sha256-abc"
    assert (path / "a").read_bytes() == b"1"
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0
    # cached: the blob is not read again (this one is not even a tar)
    assert unpack_layer_atomic(io.BytesIO(b"garbage"), cache, "sha256-abc") == path
    assert sorted(os.listdir(cache)) == ["sha256-abc"]


def test_concurrent_atomic_unpacks_of_one_key(tmp_path: Path) -> None:
    blob = make_tar([entry(f"d/f{i}", data=os.urandom(10_000)) for i in range(50)])
    cache = tmp_path / "layers"
    barrier = threading.Barrier(2)
    results: list[Path | BaseException] = []

    def unpack() -> None:
        try:
            results.append(unpack_layer_atomic(GatedReader(blob, barrier), cache, "k"))  # type: ignore[arg-type]
        except BaseException as e:
            results.append(e)

    threads = [threading.Thread(target=unpack) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [cache / "k", cache / "k"]
    assert sorted(os.listdir(cache)) == ["k"], "the loser's temporary directory is removed"
    assert len(os.listdir(cache / "k/d")) == 50


def test_failed_atomic_unpack_leaves_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "layers"
    with pytest.raises(LayerError):
        unpack_layer_atomic(io.BytesIO(make_tar([entry("../x")])), cache, "k")
    assert os.listdir(cache) == []


@pytest.mark.parametrize("key", ["sha256:abc", "../x", ".tmp-1", "a/b", ""])
def test_keys_must_be_safe_names(tmp_path: Path, key: str) -> None:
    with pytest.raises(LayerError, match="key"):
        unpack_layer_atomic(io.BytesIO(make_tar([entry("a")])), tmp_path, key)


# -------------------------------------------------------------------------------------- real overlay

_OVERLAY_SCRIPT = r"""
set -e
mount -t overlay overlay -o "lowerdir=$L2:$L1,upperdir=$UPPER,workdir=$WORK,redirect_dir=off,metacopy=off" "$MERGED"
python3 -c '
import json, os, sys
root = sys.argv[1]
seen = {}
for d, dirs, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        seen[os.path.relpath(p, root)] = open(p).read()
print(json.dumps(seen))
' "$MERGED"
rm "$MERGED/keep"
rm -r "$MERGED/dir"
mkdir "$MERGED/dir"
echo again > "$MERGED/dir/again"
umount "$MERGED"
"""


def test_overlayfs_honours_unpacked_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    """Mounts a real overlay (private mount namespace): layer 2 hides a file and a directory's content
    of layer 1; then the kernel's own upper directory, packed, gives OCI whiteouts."""
    require_root()
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.fail("unshare and mount (util-linux) are needed")
    l1 = tmp_path / "l1"
    l2 = tmp_path / "l2"
    unpack_bytes(
        make_tar(
            [
                entry("keep", data=b"k"),
                entry("gone", data=b"g"),
                entry("dir/", tarfile.DIRTYPE),
                entry("dir/old1", data=b"o1"),
                entry("dir/old2", data=b"o2"),
            ]
        ),
        l1,
    )
    unpack_bytes(
        make_tar(
            [
                entry(".wh.gone"),
                entry("dir/", tarfile.DIRTYPE),
                entry("dir/.wh..wh..opq"),
                entry("dir/new", data=b"n"),
            ]
        ),
        l2,
    )
    dirs = {name: tmp_path / name for name in ("upper", "work", "merged")}
    for d in dirs.values():
        d.mkdir()
    env = {**os.environ, "L1": str(l1), "L2": str(l2), **{k.upper(): str(v) for k, v in dirs.items()}}
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _OVERLAY_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"keep": "k", "dir/new": "n"}
    assert os.listdir(dirs["merged"]) == [], "the mount stayed inside its namespace"
    # the kernel wrote a whiteout for keep and an opaque dir: pack turns them into OCI form
    data, _ = packed(dirs["upper"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
    assert ".wh.keep" in names
    assert "dir/.wh..wh..opq" in names and "dir/again" in names
    assert not any(n.startswith("work") for n in names)


def test_zstd_packing_round_trips_and_is_deterministic(tmp_path: Path) -> None:
    require_root()
    require_zstd()
    make_upper(tmp_path / "upper")
    first, second = io.BytesIO(), io.BytesIO()
    digest = pack_layer(tmp_path / "upper", first, "zstd")
    assert (
        digest
        == pack_layer(tmp_path / "upper", second, "zstd")
        == hashlib.sha256(first.getvalue()).hexdigest()
    )
    assert first.getvalue()[:4] == b"\x28\xb5\x2f\xfd"  # zstd's magic
    gz, _ = packed(tmp_path / "upper")
    unpack_layer(io.BytesIO(first.getvalue()), tmp_path / "from-zstd")
    unpack_layer(io.BytesIO(gz), tmp_path / "from-gzip")
    assert _tree(tmp_path / "from-zstd") == _tree(tmp_path / "from-gzip")
    with pytest.raises(ValueError, match="gzip or zstd"):
        pack_layer(tmp_path / "upper", io.BytesIO(), "lz4")


def _tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, data)
    return out
