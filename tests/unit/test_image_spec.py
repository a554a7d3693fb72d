"""Image specs: ids are content hashes of the chain; every bad argument is an InvalidError."""

import sys
from pathlib import Path

import pytest

import vivace
from vivace.exception import InvalidError, NotImplementedYetError
from vivace.protocol import images as proto

Image = vivace.Image


def test_the_id_is_the_chain_and_prefixes_share_layer_keys():
    base = Image.debian_slim("3.11")
    a = base.apt_install("git").pip_install("numpy==2.*", "pandas")
    b = base.apt_install("git").pip_install("numpy==2.*", "pandas")
    assert a.object_id == b.object_id and a.object_id.startswith("im-")
    c = base.apt_install("git").pip_install("numpy==2.*")
    ka, kc = proto.layer_keys(a.steps()), proto.layer_keys(c.steps())
    assert ka[:2] == kc[:2] and ka[2] != kc[2]  # only the changed step and what follows rebuild
    assert base.env({"A": "1"}).object_id != base.env({"A": "2"}).object_id
    assert a.steps()[2] == {"kind": "pip_install", "packages": ["numpy==2.*", "pandas"]}


def test_force_build_changes_the_id_every_time():
    base = Image.debian_slim("3.11")
    assert (
        base.pip_install("six", force_build=True).object_id
        != base.pip_install("six", force_build=True).object_id
    )


def test_force_build_rebuilds_its_own_step_and_the_later_ones():
    base = Image.debian_slim("3.11")
    forced = base.pip_install("six", force_build=True).apt_install("jq")
    plain = base.pip_install("six").apt_install("jq")
    keys, plain_keys = proto.layer_keys(forced.steps()), proto.layer_keys(plain.steps())
    assert keys[0] == plain_keys[0] and keys[1] != plain_keys[1] and keys[2] != plain_keys[2]
    assert "nonce" in forced.steps()[1]
    pulled = Image.from_registry("127.0.0.1:5000/app:1", add_python="3.12", force_build=True)
    assert "nonce" in pulled.steps()[0]  # the pull itself is done again


def test_debian_slim_versions():
    assert Image.debian_slim("3.13").steps()[0]["python_version"] == "3.13"
    assert Image.debian_slim("3.11.4").steps()[0]["python_version"] == "3.11"
    assert Image.debian_slim("3.12").steps() == [  # not Debian's: a uv-managed CPython on bookworm
        {"kind": "debian_slim", "python_version": "3.11"},
        {"kind": "add_python", "python_version": "3.12"},
    ]
    for bad in ("2.7", "3.8", "3.99", "three"):
        with pytest.raises(InvalidError, match=r"3\.9 to 3\.14"):
            Image.debian_slim(bad)
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    if mine in proto.SUPPORTED_PYTHONS:
        assert Image.debian_slim().steps()[0]["python_version"] == mine


def test_local_files_are_hashed_by_content(tmp_path):
    f = tmp_path / "conf.txt"
    f.write_text("one")
    img = Image.debian_slim("3.11").add_local_file(f, "/etc/app/", copy=True)
    first = img.object_id
    step = img.steps()[1]
    assert step["kind"] == "add_files" and step["remote"] == "/"
    assert str(tmp_path) not in repr(img.steps())  # the local path is not part of the id
    assert Image.debian_slim("3.11").add_local_file(f, "/etc/app/", copy=True).object_id == first
    f.write_text("two")
    assert Image.debian_slim("3.11").add_local_file(f, "/etc/app/", copy=True).object_id != first
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    d = Image.debian_slim("3.11").add_local_dir(tmp_path / "pkg", "/opt/pkg", copy=True)
    archive = next(iter(d.archives().values()))
    import gzip
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive.data))) as tar:
        assert tar.getnames() == ["opt/pkg/a.py"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Image.debian_slim("3.11").apt_install("git; rm -rf /"), "not valid"),
        (lambda: Image.debian_slim("3.11").apt_install(), "at least one"),
        (lambda: Image.debian_slim("3.11").apt_install(3), "takes strings"),
        (lambda: Image.debian_slim("3.11").pip_install("numpy`id`"), "not valid"),
        (lambda: Image.debian_slim("3.11").pip_install("six", colour=1), "unknown parameter"),
        (lambda: Image.debian_slim("3.11").run_commands("echo\nhi"), "one-line"),
        (lambda: Image.debian_slim("3.11").env({"1A": "x"}), "not a valid environment"),
        (lambda: Image.debian_slim("3.11").workdir("relative/dir"), "absolute"),
        (lambda: Image.debian_slim("3.11").add_local_file("/nope/missing", "/x", copy=True), "not a file"),
        (lambda: Image.debian_slim("3.11").add_local_dir("/", "../x", copy=True), "absolute"),
        (
            lambda: Image.debian_slim("3.11").add_local_python_source("no_such_module_xyz", copy=True),
            "no local",
        ),
        (lambda: Image.from_registry("bad ref"), "image reference"),
        (lambda: Image.from_registry("python:3.11-slim", add_python="3"), "python_version"),
        (lambda: Image.from_id("nope"), "not an image id"),
        (lambda: Image.from_id("im-1234").pip_install("six"), "from_id"),
    ],
)
def test_bad_arguments_are_invalid_errors(build, message):
    with pytest.raises(InvalidError, match=message):
        build()


def test_features_of_later_releases_say_so():
    with pytest.raises(NotImplementedYetError, match="GPU builds"):
        Image.debian_slim("3.11").run_commands("true", gpu="A10G")
    with pytest.raises(NotImplementedYetError, match="named secrets only"):  # inline build secrets
        Image.debian_slim("3.11").run_commands("true", secrets=[vivace.Secret.from_dict({"K": "v"})])


def test_the_server_rejects_malformed_chains():
    with pytest.raises(proto.StepError, match="base"):
        proto.validate_steps([{"kind": "apt_install", "packages": ["git"]}])
    with pytest.raises(proto.StepError, match="base"):
        proto.validate_steps([{"kind": "debian_slim", "python_version": "3.11"}] * 2)
    with pytest.raises(proto.StepError, match="unknown step"):
        proto.validate_steps([{"kind": "debian_slim", "python_version": "3.11"}, {"kind": "curl_bash"}])
    with pytest.raises(proto.StepError, match="digest"):
        proto.validate_step({"kind": "add_files", "digest": "abc", "remote": "/"})


def test_add_python_is_a_step_of_its_own():
    image = Image.from_registry("127.0.0.1:5000/tools:1", add_python="3.12")
    assert image.steps() == [
        {"kind": "from_registry", "reference": "127.0.0.1:5000/tools:1"},
        {"kind": "add_python", "python_version": "3.12"},
    ]


def test_layer_configs_are_checked():
    assert proto.validate_layer_config({"env": {"A": "1"}, "python": "/usr/bin/python3"})
    for bad in ({"env": {"A": 1}}, {"python": "python3"}, {"cmd": "ls"}, {"shell": "/bin/sh"}):
        with pytest.raises(proto.StepError):
            proto.validate_layer_config(bad)


def test_the_interpreter_is_found_through_the_images_own_symlinks(tmp_path):
    from vivace.worker.builder import find_python

    assert find_python(tmp_path) is None
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/python3.11").write_text("")
    (tmp_path / "usr/bin/python3").symlink_to("python3.11")
    assert find_python(tmp_path) == "/usr/bin/python3"
    (tmp_path / "usr/local/bin").mkdir(parents=True)
    (tmp_path / "usr/local/bin/python3").symlink_to("/opt/missing/python3")  # dangling inside the image
    assert find_python(tmp_path) == "/usr/bin/python3"
    (tmp_path / "opt/py/bin").mkdir(parents=True)
    (tmp_path / "opt/py/bin/python3").write_text("")
    (tmp_path / "opt/missing").symlink_to("../opt/py/bin/../bin")
    assert find_python(tmp_path) == "/usr/local/bin/python3"


def test_add_python_installs_a_managed_interpreter_on_path():
    from vivace.worker.step_commands import commands_for

    install, link = commands_for({"kind": "add_python", "python_version": "3.12"})
    assert "python install --no-bin 3.12" in install and "UV_PYTHON_DOWNLOADS=automatic" in install
    assert "/usr/local/bin/python3" in link and "EXTERNALLY-MANAGED" in link


def test_files_attached_at_start_are_not_part_of_the_image(tmp_path):
    src = tmp_path / "app.cfg"
    src.write_text("one")
    base = Image.debian_slim("3.11").pip_install("six")
    attached = base.add_local_file(src, "/etc/app.cfg")
    assert attached.object_id == base.object_id and attached.steps() == base.steps()
    first = attached.mounts()
    assert len(first) == 1 and first[0] in attached.archives()
    src.write_text("two")
    assert Image.debian_slim("3.11").pip_install("six").add_local_file(src, "/etc/app.cfg").mounts() != first
    with pytest.raises(InvalidError, match="copy=False"):
        attached.pip_install("numpy")  # a build step cannot follow files only attached at start
    with pytest.raises(InvalidError, match="copy=True"):
        attached.add_local_file(src, "/etc/other.cfg", copy=True)


def test_a_dockerfile_becomes_one_step_per_instruction(tmp_path):
    (tmp_path / "app.py").write_text("print(1)\n")
    (tmp_path / "Dockerfile").write_text(
        'FROM 127.0.0.1:5000/base:1\nENV A=1\nWORKDIR /app\nCOPY app.py .\nRUN pip list\nCMD ["python", "app.py"]\n'
    )
    image = Image.from_dockerfile(tmp_path / "Dockerfile", context_dir=tmp_path)
    kinds = [s["kind"] for s in image.steps()]
    assert kinds == ["from_registry", "env", "workdir", "add_files", "run_commands", "cmd"]
    assert image.steps()[4] == {"kind": "run_commands", "commands": ["pip list"]}
    more = image.dockerfile_commands(["ENV B=2", "RUN echo $B"])
    assert more.steps()[-2:] == [
        {"kind": "env", "vars": {"B": "2"}},
        {"kind": "run_commands", "commands": ["echo $B"]},
    ]
    with pytest.raises(InvalidError, match="FROM"):
        image.dockerfile_commands("FROM debian")
    with pytest.raises(InvalidError, match="cannot read the Dockerfile"):
        Image.from_dockerfile(tmp_path / "missing")
    assert image.dockerfile_commands("USER nobody:nogroup").steps()[-1] == {
        "kind": "user",
        "name": "nobody:nogroup",
    }
    with pytest.raises(InvalidError, match="user"):
        image.dockerfile_commands("USER bad/name")


def _weights(name):
    return name


def test_run_function_is_a_step_with_its_pickle_uploaded_beside_it():
    base = Image.debian_slim("3.11")
    image = base.run_function(_weights, args=("a",)).env({"X": "1"})
    step = image.steps()[1]
    assert step["kind"] == "run_function" and step["name"] == "_weights"
    assert step["digest"] in image.archives()  # uploaded with the build
    assert (
        base.run_function(_weights, args=("a",)).object_id
        == base.run_function(_weights, args=("a",)).object_id
    )
    assert (
        base.run_function(_weights, args=("b",)).object_id
        != base.run_function(_weights, args=("a",)).object_id
    )
    assert "nonce" in base.run_function(_weights, force_build=True).steps()[1]
    with pytest.raises(InvalidError, match="takes a function"):
        base.run_function(42)
    with pytest.raises(InvalidError, match="cannot pickle"):
        import threading

        base.run_function(_weights, args=(threading.Lock(),))
    with pytest.raises(InvalidError, match="unknown parameter"):
        base.run_function(_weights, colour="red")


def test_worker_registry_credentials_come_from_a_docker_style_file(tmp_path):
    import base64
    import json

    from vivace.worker.registry import DOCKER_HUB, RegistryError, credentials_file, credentials_for

    path = tmp_path / "config.json"
    assert credentials_for("ghcr.io", path) is None  # no file: anonymous
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw1").decode()},
                    "ghcr.io": {"username": "gh", "password": "pw2"},
                    "127.0.0.1:5000": {"auth": base64.b64encode(b"alice:s3:cret").decode()},
                    "helper.example": {},
                    "broken.example": {"auth": "%%%"},
                }
            }
        )
    )
    assert credentials_for(DOCKER_HUB, path) == ("hub", "pw1")
    assert credentials_for("ghcr.io", path) == ("gh", "pw2")
    assert credentials_for("127.0.0.1:5000", path) == ("alice", "s3:cret")
    assert credentials_for("quay.io", path) is None
    with pytest.raises(RegistryError, match="credential helper"):
        credentials_for("helper.example", path)
    with pytest.raises(RegistryError, match="malformed") as err:
        credentials_for("broken.example", path)
    assert "%%%" not in str(err.value)
    path.write_text("{not json")
    with pytest.raises(RegistryError, match="cannot be read"):
        credentials_for("ghcr.io", path)
    assert credentials_file({"VIVACE_REGISTRY_AUTH": "/etc/vivace/auth.json"}) == Path(
        "/etc/vivace/auth.json"
    )
    assert credentials_file({"DOCKER_CONFIG": "/cfg", "HOME": "/root"}) == Path("/cfg/config.json")
    assert credentials_file({"HOME": "/home/w"}) == Path("/home/w/.docker/config.json")


def test_user_names_resolve_from_the_images_own_files(tmp_path):
    from vivace.exception import ImageBuildError
    from vivace.worker.builder import resolve_user

    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nold:x:500:500::/home/old:/bin/sh\n")
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (upper / "etc/group").write_text("root:x:0:\napp:x:1000:\nstaff:x:50:app\n")
    layers = [upper, lower]  # top first: the upper's passwd is the one the container sees
    assert resolve_user("root", layers) is None and resolve_user("", layers) is None
    assert resolve_user("app", layers) == (1000, 1000, "/home/app")
    assert resolve_user("app:staff", layers) == (1000, 50, "/home/app")
    assert resolve_user("1234:99", layers) == (1234, 99, "/")
    with pytest.raises(ImageBuildError, match="no user 'old'"):
        resolve_user("old", layers)
    with pytest.raises(ImageBuildError, match="no group 'wheel'"):
        resolve_user("app:wheel", layers)
