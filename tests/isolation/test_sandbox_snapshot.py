"""Sandbox.snapshot_filesystem: a sandbox's files become an image that new sandboxes start from, under
runsc and crun (whose user namespace shifts owners: the image keeps the container's own ids)."""

import pytest

import vivace
from vivace import exception as exc
from vivace.testing.cluster import LocalCluster

from .conftest import require_debootstrap, require_runtime, sdk_pointed_at

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]

BASE_CACHE = "/var/cache/vivace/test-images"  # shared with the image tests: debootstrap is slow
PY = "python3"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    for rt in ("runsc", "crun"):
        require_runtime(rt)
    require_debootstrap()
    home = tmp_path_factory.mktemp("snap")
    env = {"VIVACE_BASE_CACHE": BASE_CACHE}
    with (
        LocalCluster(home, runtimes=["runsc", "crun"], warm_pool=0, worker_env=env) as cluster,
        sdk_pointed_at(cluster),
    ):
        yield vivace.App.lookup("snapshots", create_if_missing=True)


def _run(sb, code):
    p = sb.exec(PY, "-c", code)
    out, err = p.stdout.read(), p.stderr.read()
    assert p.wait() == 0, err
    return out


@pytest.mark.parametrize("runtime", ["runsc", "crun"])
def test_a_snapshot_starts_new_sandboxes_with_the_files_it_had(app, runtime):
    image = vivace.Image.debian_slim()
    sb = vivace.Sandbox.create(app=app, image=image, runtime=runtime)
    _run(
        sb,
        "import os\nos.makedirs('/data/sub')\nopen('/data/sub/a.txt', 'w').write('kept')\n"
        "os.remove('/etc/debian_version')\nos.symlink('/data/sub/a.txt', '/data/link')",
    )
    snap = sb.snapshot_filesystem()
    assert snap.object_id.startswith("im-")
    sb.terminate()
    for rt in ("runsc", "crun"):  # either runtime starts from it, whichever made it
        box = vivace.Sandbox.create(app=app, image=snap, runtime=rt)
        try:
            seen = _run(
                box,
                "import os\nst = os.stat('/data/sub/a.txt')\n"
                "print(open('/data/link').read(), st.st_uid, st.st_gid, os.path.exists('/etc/debian_version'),"
                " os.path.exists('/etc/os-release'))",
            )
            # owned by the sandbox's root, whatever ids it had on the host (crun maps root to an unprivileged uid)
            assert seen.split() == ["kept", "0", "0", "False", "True"], (runtime, rt, seen)
        finally:
            box.terminate()


def test_a_function_starts_from_a_snapshot(app):
    sb = vivace.Sandbox.create(app=app, image=vivace.Image.debian_slim())
    _run(sb, "open('/opt/model.txt', 'w').write('weights from a sandbox')")
    snap = sb.snapshot_filesystem()
    sb.terminate()
    fn_app = vivace.App("from-snapshot")

    @fn_app.function(image=snap, serialized=True)
    def read_model() -> str:
        return open("/opt/model.txt").read()

    with fn_app.run():
        assert read_model.remote() == "weights from a sandbox"


def test_a_sandbox_without_an_image_cannot_be_snapshotted(app):
    sb = vivace.Sandbox.create(app=app)
    try:
        with pytest.raises(exc.InvalidError, match="needs a sandbox started from an Image"):
            sb.snapshot_filesystem()
    finally:
        sb.terminate()
