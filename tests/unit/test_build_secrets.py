"""Build secrets on the client and in the build log: steps name secrets (never values), and the worker's
build log masks the values a command prints."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import vivace
from vivace import exception as exc
from vivace.protocol import images as proto
from vivace.worker.builder import BuildLog


def _named(name: str) -> vivace.Secret:
    return vivace.Secret.from_name(name)


def test_build_steps_name_their_secrets() -> None:
    base = vivace.Image.debian_slim("3.11")
    image = (
        base.apt_install("jq", secrets=[_named("apt")])
        .pip_install("six", secrets=[_named("pypi"), _named("pypi")])
        .uv_pip_install("attrs", secrets=[_named("uv")])
        .run_commands("make", secrets=[_named("a"), _named("b")])
        .run_commands("plain")
    )
    steps = image.steps()
    assert [s.get("secrets") for s in steps] == [None, ["apt"], ["pypi"], ["uv"], ["a", "b"], None]
    for step in steps:
        proto.validate_step(step)
    # the key holds names: another secret name is another image, the same name the same one
    again = base.apt_install("jq", secrets=[_named("apt")])
    assert again.object_id == base.apt_install("jq", secrets=[_named("apt")]).object_id
    assert again.object_id != base.apt_install("jq", secrets=[_named("other")]).object_id
    assert again.object_id != base.apt_install("jq").object_id


def test_run_function_and_dockerfile_run_steps_take_secrets(tmp_path: Path) -> None:
    def f() -> None:
        pass

    image = vivace.Image.debian_slim("3.11").run_function(f, secrets=[_named("fn")])
    assert image.steps()[-1]["secrets"] == ["fn"]
    docker = vivace.Image.debian_slim("3.11").dockerfile_commands(
        ["ENV A=1", "RUN echo one", "RUN echo two"], context_dir=tmp_path, secrets=[_named("dk")]
    )
    runs = [s for s in docker.steps() if s["kind"] == "run_commands"]
    assert len(runs) == 2 and all(s["secrets"] == ["dk"] for s in runs)
    assert "secrets" not in next(s for s in docker.steps() if s["kind"] == "env")


def test_a_registry_base_takes_its_credentials_from_a_named_secret() -> None:
    image = vivace.Image.from_registry("python:3.11-slim", secret=_named("registry"))
    assert image.steps()[0] == {
        "kind": "from_registry",
        "reference": "python:3.11-slim",
        "auth_secret": "registry",
    }
    assert proto.step_secrets(image.steps()[0]) == ["registry"]
    assert proto.REGISTRY_SECRET_KEYS == ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")


@pytest.mark.parametrize(
    ("secrets", "error", "match"),
    [
        ([vivace.Secret.from_dict({"K": "v"})], exc.NotImplementedYetError, "named secrets only"),
        (["name"], exc.InvalidError, "vivace.Secret objects"),
        ("name", exc.InvalidError, "a list of vivace.Secret"),
        (_named("x"), exc.InvalidError, "a list of vivace.Secret"),
    ],
)
def test_bad_build_secrets_are_refused(secrets: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        vivace.Image.debian_slim("3.11").run_commands("true", secrets=secrets)
    with pytest.raises(error, match=match):
        vivace.Image.debian_slim("3.11").pip_install("six", secrets=secrets)


def test_the_protocol_refuses_bad_secret_names() -> None:
    for bad in ([], ["bad name"], ["x" * 65], [3], "name", ["a"] * (proto.MAX_BUILD_SECRETS + 1)):
        with pytest.raises(proto.StepError):
            proto.validate_step({"kind": "run_commands", "commands": ["true"], "secrets": bad})
    with pytest.raises(proto.StepError):
        proto.validate_step({"kind": "from_registry", "reference": "python:3", "auth_secret": "bad name"})
    with pytest.raises(proto.StepError):  # metadata steps run nothing: no secrets there
        proto.validate_step({"kind": "env", "vars": {"A": "1"}, "secrets": ["x"]})


def test_the_build_log_masks_secret_values() -> None:
    async def run() -> tuple[list[str], str]:
        blog = BuildLog(None, "im-x", "wk-x", ["hunter2-long", "abc", "hunter2-long-er"])  # type: ignore[arg-type]
        blog("token=hunter2-long-er and hunter2-long\n")
        blog("abc stays: too short to mask")
        return blog.pending, blog.redact("failed: hunter2-long")

    pending, error = asyncio.run(run())
    assert pending == ["token=*** and ***", "abc stays: too short to mask"]
    assert error == "failed: ***"
