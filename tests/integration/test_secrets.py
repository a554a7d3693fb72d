"""Secrets through the real control plane: the HTTP edge never returns values, the CLI shows names only,
and a function's containers see the values as environment variables (without them reaching any log)."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import vivace
from vivace import exception as exc
from vivace._version import __version__

pytestmark = pytest.mark.timeout(120)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _value() -> str:
    return f"value-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def http(cluster: Any) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {cluster.user_token}", "x-vivace-version": __version__}
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=10) as c:
        yield c


def _problem(resp: httpx.Response, status: int, code: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    if code:
        assert body["code"] == code, body
    return str(body["detail"])


def test_no_route_returns_values(cluster: Any, http: httpx.Client) -> None:
    name, value = _name("api"), _value()
    vivace.Secret.objects.create(name, {"API_TOKEN": value, "USER": "me"})
    listed = http.get("/v1/objects/secret")
    assert listed.status_code == 200 and name in listed.text
    assert value not in listed.text and "API_TOKEN" not in listed.text
    found = http.post("/v1/secrets/lookup", json={"name": name, "required_keys": ["API_TOKEN"]})
    assert found.status_code == 200 and set(found.json()) == {"secret_id"}
    assert value not in found.text
    missing = http.post("/v1/secrets/lookup", json={"name": name, "required_keys": ["API_TOKEN", "HOST"]})
    detail = _problem(missing, 404, "missing_keys")
    assert "HOST" in detail and value not in detail
    with pytest.raises(exc.NotFoundError, match="missing key"):
        vivace.Secret.from_name(name, required_keys=["HOST"]).hydrate()
    assert vivace.Secret.from_name(name, required_keys=["API_TOKEN", "USER"]).hydrate().name == name
    # a refused overwrite says so without echoing anything it was sent
    again = http.post("/v1/secrets", json={"name": name, "env": {"API_TOKEN": "other-" + value}})
    assert "other-" not in _problem(again, 409, "already_exists")
    with pytest.raises(exc.AlreadyExistsError):
        vivace.Secret.objects.create(name, {"API_TOKEN": "x"})
    vivace.Secret.objects.create(name, {"API_TOKEN": "x"}, allow_existing=True)  # left as it was
    bad = http.post("/v1/secrets", json={"name": _name("bad"), "env": {"GOOD": value, "BAD": 7}})
    assert value not in _problem(bad, 422, "invalid_secret")
    # an inline secret needs a live app, and answers with its id only
    app_id = http.post("/v1/apps", json={}).json()["app_id"]
    inline = http.post("/v1/secrets/inline", json={"app_id": app_id, "env": {"K": value}})
    assert inline.status_code == 200 and set(inline.json()) == {"secret_id"} and value not in inline.text
    _problem(http.post("/v1/secrets/inline", json={"app_id": "ap-nope1234", "env": {"K": "v"}}), 404)
    # no generic route reads a secret's contents either
    sid = found.json()["secret_id"]
    _problem(http.get(f"/v1/dicts/{sid}/len"), 404)
    assert name in vivace.Secret.objects.list()
    vivace.Secret.objects.delete(name)
    assert name not in vivace.Secret.objects.list()
    with pytest.raises(exc.NotFoundError):
        vivace.Secret.objects.delete(name)
    vivace.Secret.objects.delete(name, allow_missing=True)


def test_secrets_are_never_made_through_the_generic_object_routes(http: httpx.Client) -> None:
    name = _name("generic")
    for resp in (
        http.post("/v1/objects/secret", json={"name": name}),
        http.post("/v1/objects/secret/ephemeral"),
        http.post("/v1/objects/secret/lookup", json={"name": name, "create_if_missing": True}),
    ):
        assert "/v1/secrets" in _problem(resp, 400, "secret_route")
    assert name not in vivace.Secret.objects.list()
    # an inline secret is not an ephemeral object: no heartbeat, no ephemeral delete
    app_id = http.post("/v1/apps", json={}).json()["app_id"]
    sid = http.post("/v1/secrets/inline", json={"app_id": app_id, "env": {"K": "v"}}).json()["secret_id"]
    _problem(http.post(f"/v1/ephemeral/{sid}/heartbeat"), 400, "secret_route")
    _problem(http.delete(f"/v1/ephemeral/{sid}"), 400, "secret_route")
    # looking a name up without creating it is fine (it answers with an id)
    _problem(http.post("/v1/objects/secret/lookup", json={"name": name}), 404)


def test_secret_routes_need_a_user_token(cluster: Any) -> None:
    routes = [
        ("/v1/secrets", {"name": "x", "env": {"K": "v"}}),
        ("/v1/secrets/inline", {"app_id": "ap-x", "env": {"K": "v"}}),
        ("/v1/secrets/lookup", {"name": "x"}),
    ]
    with httpx.Client(base_url=cluster.url, headers={"x-vivace-version": __version__}, timeout=10) as c:
        for path, body in routes:
            _problem(c.post(path, json=body), 401)
            _problem(c.post(path, json=body, headers={"authorization": "Bearer tk-abcd:wrong"}), 401)
            worker = {"authorization": f"Bearer {cluster.worker_token}"}
            _problem(c.post(path, json=body, headers=worker), 403)
        _problem(c.get("/v1/objects/secret"), 401)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vivace.cli.main", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_cli_creates_lists_and_deletes_without_showing_values(cluster: Any, tmp_path: Path) -> None:
    name, value, dotted = _name("cli"), _value(), _value()
    (tmp_path / "prod.env").write_text(f"# credentials\nexport FROM_FILE={dotted}\nBOTH=file\n")
    made = _cli(
        "secret", "create", name, f"TOKEN={value}", "BOTH=arg", "--from-dotenv", str(tmp_path / "prod.env")
    )
    assert made.returncode == 0, made.stderr
    assert value not in made.stdout and dotted not in made.stdout and "3 key(s)" in made.stdout
    listed = _cli("secret", "list")
    assert listed.returncode == 0 and name in listed.stdout
    assert value not in listed.stdout and "TOKEN" not in listed.stdout and "st-" not in listed.stdout
    again = _cli("secret", "create", name, "TOKEN=x")
    assert again.returncode != 0 and "already exists" in again.stderr
    forced = _cli("secret", "create", name, "TOKEN=new", "--force")
    assert forced.returncode == 0, forced.stderr
    vivace.Secret.from_name(name, required_keys=["TOKEN"]).hydrate()
    with pytest.raises(exc.NotFoundError, match="FROM_FILE"):  # --force replaced every value
        vivace.Secret.from_name(name, required_keys=["FROM_FILE"]).hydrate()
    for bad, why in (
        (["secret", "create", _name("x")], "KEY=VALUE arguments or --from-dotenv"),
        (["secret", "create", _name("x"), "NOEQUALS"], "expected KEY=VALUE"),
        (["secret", "create", _name("x"), "VIVACE_X=1"], "reserved"),
        (["secret", "create", "bad name", "K=v"], "invalid name"),
    ):
        out = _cli(*bad)
        assert out.returncode != 0 and why in out.stderr, out.stderr
    assert _cli("secret", "delete", name, "--yes").returncode == 0
    assert name not in vivace.Secret.objects.list()


def test_containers_get_the_values_and_no_log_does(
    cluster: Any, app_loader: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    mod = app_loader("secret_app")
    named_value = _value()
    vivace.Secret.objects.create(
        mod.NAMED, {"NAMED_TOKEN": named_value, "SHARED": "from-named"}, overwrite=True
    )
    keys = ["INLINE_TOKEN", "NAMED_TOKEN", "SHARED", "ONLY_ENV"]
    with mod.app.run():
        got = mod.read_env.remote(keys)
        # secrets apply after env=, in order: the named secret (listed last) wins over the inline one
        assert got == {
            "INLINE_TOKEN": mod.INLINE_VALUE,
            "NAMED_TOKEN": named_value,
            "SHARED": "from-named",
            "ONLY_ENV": "env",
        }
        assert mod.no_secrets.remote() is None  # only the functions that name a secret get it
        seen = mod.try_secret_api.remote(mod.NAMED)
        assert seen == {
            "listed": True,
            "lookup": mod.NAMED,
            "create": "PermissionDeniedError",
            "delete": "PermissionDeniedError",
        }
    assert mod.NAMED in vivace.Secret.objects.list()
    logs = "\n".join(r.getMessage() for r in caplog.records)  # the control plane runs in this process
    for f in cluster.home.glob("*.log"):
        logs += f.read_text(errors="replace")  # the worker's log
    assert "NAMED_TOKEN" not in logs or named_value not in logs
    assert named_value not in logs and mod.INLINE_VALUE not in logs
    app_logs = _cli("app", "logs", "secret-app")
    assert named_value not in app_logs.stdout + app_logs.stderr
    vivace.Secret.objects.delete(mod.NAMED)


def _fresh_app(name: str) -> Any:
    """tests/integration/apps/secret_app.py loaded again as ``name``: Secrets not yet looked up."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "apps" / "secret_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_a_missing_named_secret_or_key_stops_the_app_from_registering(cluster: Any) -> None:
    mod = _fresh_app("secret_app_missing")
    vivace.Secret.objects.delete(mod.NAMED, allow_missing=True)
    with pytest.raises(exc.NotFoundError, match=mod.NAMED), mod.app.run():
        pass
    vivace.Secret.objects.create(mod.NAMED, {"OTHER": "v"})
    mod = _fresh_app("secret_app_missing_key")
    with pytest.raises(exc.NotFoundError, match="missing key\\(s\\): NAMED_TOKEN"), mod.app.run():
        pass
    vivace.Secret.objects.delete(mod.NAMED)


def test_a_secret_deleted_after_registration_fails_the_containers_clearly(cluster: Any) -> None:
    mod = _fresh_app("secret_app_deleted")
    vivace.Secret.objects.create(mod.NAMED, {"NAMED_TOKEN": "v"}, overwrite=True)
    with mod.app.run():
        sid = vivace.Secret.from_name(mod.NAMED).hydrate()._ids[None]
        vivace.Secret.objects.delete(mod.NAMED)
        with pytest.raises(exc.Error, match=f"secret {sid} was deleted"):
            mod.read_env.remote(["NAMED_TOKEN"])
