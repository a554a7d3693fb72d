"""Volumes mounted in real containers (crun): what one container commits another sees after reload or
when it starts, exit commits, read-only mounts refuse writes, and the client's view is the same."""

import io
import os

import pytest

import vivace
from vivace import exception as exc
from vivace.testing.cluster import LocalCluster

from .conftest import _load, replace_worker, require_runtime, sdk_pointed_at, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def vols(tmp_path_factory):
    require_runtime("crun")
    home = tmp_path_factory.mktemp("vols")
    with LocalCluster(home, runtimes=["crun"], warm_pool=1) as cluster, sdk_pointed_at(cluster):
        module = _load("voluminous")
        module.cluster = cluster
        yield module


def _text(vol, path):
    return b"".join(vol.read_file(path)).decode()


def test_what_the_client_uploads_a_container_reads(vols, tmp_path):
    local = tmp_path / "weights"
    (local / "layer").mkdir(parents=True)
    (local / "layer" / "w.txt").write_text("weights v1")
    with vols.vol.batch_upload() as batch:
        batch.put_directory(local, "/model")
        batch.put_file(io.BytesIO(b"hello from a file object"), "/greeting.txt")
    with vols.app.run():
        seen = vols.read.remote("model/layer/w.txt")
        assert seen["text"] == "weights v1"
        assert seen["uid"] == 0 and seen["writable"]  # the container's root owns its mount
        assert vols.read.remote("greeting.txt")["text"] == "hello from a file object"
    # uploading over an existing file needs force=True, and a refused batch writes nothing
    with pytest.raises(FileExistsError), vols.vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"new"), "/fresh.txt")
        batch.put_file(io.BytesIO(b"v2"), "/greeting.txt")
    assert "fresh.txt" not in [e.path for e in vols.vol.listdir("/")]
    with vols.vol.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"v2"), "/greeting.txt")
    assert _text(vols.vol, "greeting.txt") == "v2"


def test_a_commit_is_seen_by_another_container_after_reload_and_by_the_client(vols):
    with vols.app.run():
        assert "notes" in vols.write.remote("notes/a.txt", "from container A")
        # a different function: another container, with its own copy of the volume
        assert vols.read.remote("notes/a.txt")["text"] == "from container A"
        vols.write.remote("notes/a.txt", "changed")
        assert vols.read.remote("notes/a.txt")["text"] == "changed"
    assert _text(vols.vol, "notes/a.txt") == "changed"
    entries = {e.path: e for e in vols.vol.listdir("notes")}
    assert entries["notes/a.txt"].type == vivace.volume.FileEntryType.FILE
    assert entries["notes/a.txt"].size == len("changed")


def test_a_container_that_exits_without_commit_still_commits(vols):
    with vols.app.run():
        vols.write.remote("exit/kept.txt", "committed on exit", commit=False)
    # the app stopped: its containers exit, and their writes are committed then
    wait_for(
        lambda: "exit/kept.txt" in [e.path for e in vols.vol.listdir("/", recursive=True)],
        "the exit commit",
        timeout=60,
    )
    assert _text(vols.vol, "exit/kept.txt") == "committed on exit"


def test_a_read_only_mount_refuses_writes(vols):
    with vols.vol.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"read me"), "/ro.txt")
    with vols.app.run():
        seen = vols.read_only.remote("ro.txt")
    assert seen == {"text": "read me", "write": "Read-only file system"}
    assert "intruder.txt" not in [e.path for e in vols.vol.listdir("/")]


def test_client_side_copy_and_remove_reach_new_containers(vols):
    with vols.vol.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"original"), "/src/file.txt")
    vols.vol.copy_files(["/src/file.txt"], "/copies/")
    vols.vol.copy_files(["/src"], "/src-copy")
    with pytest.raises(FileNotFoundError):
        vols.vol.copy_files(["/missing"], "/x")
    assert _text(vols.vol, "copies/file.txt") == "original"
    assert _text(vols.vol, "src-copy/file.txt") == "original"
    with pytest.raises(exc.ConflictError):
        vols.vol.remove_file("/src")  # not empty
    vols.vol.remove_file("/src", recursive=True)
    with vols.app.run():
        assert vols.read.remote("src/file.txt", reload=False)["text"] is None
        assert vols.read.remote("copies/file.txt", reload=False)["text"] == "original"


def test_commit_outside_a_container_and_bad_paths_are_clear_errors(vols):
    with pytest.raises(exc.InvalidError, match="inside a container"):
        vols.vol.commit()
    with pytest.raises(exc.InvalidError, match=r"'\.\.'"):
        vols.vol.listdir("../etc")
    with pytest.raises(FileNotFoundError):
        vols.vol.listdir("/does/not/exist")
    with pytest.raises(IsADirectoryError):
        list(vols.vol.read_file("/copies"))


def test_links_planted_in_a_mount_never_reach_the_host(vols, tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "secret.txt").write_text("host secret")
    with vols.app.run():
        seen = vols.plant_links.remote(str(canary))
    # the worker replaced the link with the volume's directory inside the mount
    assert seen == {"link_is_link": False, "planted": "planted"}
    assert sorted(p.name for p in canary.iterdir()) == ["secret.txt"]  # nothing written on the host
    assert (canary / "secret.txt").read_text() == "host secret"
    paths = [e.path for e in vols.vol.listdir("/", recursive=True)]
    assert "leak.txt" not in paths and "fifo" not in paths  # links and fifos are not volume content
    assert _text(vols.vol, "link/planted.txt") == "planted"


def test_app_level_secrets_and_volumes_reach_every_function(vols):
    """``App(secrets=, volumes=)`` are defaults each function gets besides its own (its own secret wins a
    key both set)."""
    with vols.vol.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"shared by the app"), "/app.txt")
    app = vivace.App(
        "app-defaults",
        secrets=[vivace.Secret.from_dict({"APP_LEVEL": "app", "BOTH": "from the app"})],
        volumes={"/shared": vols.vol},
    )

    @app.function(serialized=True, secrets=[vivace.Secret.from_dict({"BOTH": "own"})])
    def probe():
        with open("/shared/app.txt") as f:
            text = f.read()
        return {"APP_LEVEL": os.environ.get("APP_LEVEL"), "BOTH": os.environ.get("BOTH"), "file": text}

    with app.run():
        seen = probe.remote()
    assert seen == {"APP_LEVEL": "app", "BOTH": "own", "file": "shared by the app"}


# last: after every test above has run containers with mounts
def test_nothing_is_left_on_the_worker_after_the_containers_go(vols):
    containers = vols.cluster.home / "worker" / "containers"
    wait_for(lambda: not list(containers.glob("*/volumes/*")), "the mount directories to go", timeout=60)
    assert os.path.isdir(vols.cluster.home / "worker" / "volume-cache")


def test_another_worker_assembles_the_mount_from_the_blob_store(vols):
    """Volumes follow functions across workers: a second worker, with an empty cache, mounts what a
    container on the first one committed."""
    cluster = vols.cluster
    with vols.app.run():
        vols.write.remote("moved/w.txt", "written on the first worker")
    replace_worker(cluster, "worker2")
    with vols.app.run():
        assert vols.read.remote("moved/w.txt")["text"] == "written on the first worker"
    cached = [p for p in (cluster.home / "worker2" / "volume-cache").rglob("*") if p.is_file()]
    assert cached, "the second worker fetched the content into its own cache"
