"""Contract: sandboxes (a hidden function, one container, a row with name and tags) behave the same on
SQLite and Postgres, and the scheduler places them only where a sandbox runtime is."""

from __future__ import annotations

from typing import Any

import pytest

from vivace.protocol.functions import FunctionSpec
from vivace.server.errors import Gone, NotFound
from vivace.server.services import apps, containers, workers
from vivace.server.services import sandboxes as svc


def _spec(**kw: Any) -> FunctionSpec:
    return FunctionSpec(
        name="sandbox", module="__sandbox__", qualname="sandbox", sandbox={"command": []}, **kw
    )


def _app(h: Any) -> str:
    return str(h.w(lambda tx: apps.create_app(tx, "sbx", "deployed", "test"))["app_id"])


def _create(
    h: Any, app_id: str, name: str | None = None, tags: dict[str, str] | None = None
) -> dict[str, str]:
    return dict(h.w(lambda tx: svc.create(tx, app_id, _spec(), name, tags or {})))


def test_a_sandbox_is_a_pending_container_of_an_inactive_function(h: Any) -> None:
    app_id = _app(h)
    made = _create(h, app_id, "one", {"k": "v"})
    assert made["sandbox_id"].startswith("sb-")
    info = h.w(lambda tx: svc.get(tx, made["sandbox_id"]))
    assert info["state"] == "pending" and info["name"] == "one" and info["tags"] == {"k": "v"}
    assert info["returncode"] is None and info["result"] is None
    # the autoscaler never starts or stops anything for the hidden function
    assert h.one("SELECT active FROM functions WHERE name = ?", (made["sandbox_id"],)) == 0
    assert h.w(containers.autoscale).created == []
    assert h.one("SELECT state FROM containers WHERE id = ?", (made["container_id"],)) == "pending"


def test_names_are_unique_among_running_sandboxes_of_an_app(h: Any) -> None:
    app_id = _app(h)
    first = _create(h, app_id, "job")
    with pytest.raises(svc.NameTaken):
        _create(h, app_id, "job")
    other = str(h.w(lambda tx: apps.create_app(tx, "other", "deployed", "test"))["app_id"])
    _create(h, other, "job")  # another app's namespace
    assert h.w(lambda tx: svc.find(tx, app_id, "job"))["sandbox_id"] == first["sandbox_id"]
    h.w(lambda tx: svc.terminate(tx, first["sandbox_id"]))  # pending: stopped at once, its name freed
    assert h.w(lambda tx: svc.get(tx, first["sandbox_id"]))["result"] == "terminated"
    with pytest.raises(NotFound):
        h.w(lambda tx: svc.find(tx, app_id, "job"))
    again = _create(h, app_id, "job")
    assert again["sandbox_id"] != first["sandbox_id"]


def test_list_filters_by_app_and_every_tag(h: Any) -> None:
    app_id = _app(h)
    a = _create(h, app_id, tags={"team": "ml", "run": "1"})["sandbox_id"]
    b = _create(h, app_id, tags={"team": "ml", "run": "2"})["sandbox_id"]
    c = _create(h, app_id, tags={"team": "infra"})["sandbox_id"]

    def ids(**kw: Any) -> set[str]:
        return {r["sandbox_id"] for r in h.w(lambda tx: svc.list_sandboxes(tx, app_id=app_id, **kw))}

    assert ids(tags={}) == {a, b, c}
    assert ids(tags={"team": "ml"}) == {a, b}
    assert ids(tags={"team": "ml", "run": "2"}) == {b}
    h.w(lambda tx: svc.set_tags(tx, c, {"team": "ml", "run": "2"}))
    assert ids(tags={"run": "2"}) == {b, c}
    h.w(lambda tx: svc.terminate(tx, b))
    assert ids(tags={"run": "2"}) == {c}
    assert ids(tags={"run": "2"}, include_finished=True) == {b, c}


def test_a_stopped_app_takes_no_sandboxes_and_unknown_ids_are_not_found(h: Any) -> None:
    app_id = _app(h)
    h.w(lambda tx: apps.stop_app(tx, app_id, "test"))
    with pytest.raises(Gone):
        _create(h, app_id)
    with pytest.raises(NotFound):
        _create(h, "ap-doesnotexist")
    with pytest.raises(NotFound):
        h.w(lambda tx: svc.get(tx, "sb-doesnotexist"))


def test_the_scheduler_places_sandboxes_only_on_workers_with_a_sandbox_runtime(h: Any) -> None:
    app_id = _app(h)
    made = _create(h, app_id)
    h.w(lambda tx: workers.register(tx, "plain", 8.0, 8192, {}, ["process"], "test"))
    assert h.w(containers.schedule) == {}
    why = dict(h.w(containers.unplaceable))
    assert "is a sandbox, which runs under runsc, crun, runc" in why[made["container_id"]]
    wid = h.w(lambda tx: workers.register(tx, "oci", 8.0, 8192, {}, ["crun", "process"], "test"))
    assert h.w(containers.schedule) == {made["container_id"]: wid}
    # started, it is ready at once (no runtime asks for work in a sandbox) and counts as running
    h.w(lambda tx: workers.container_event(tx, wid, workers.ContainerEvent(made["container_id"], "started")))
    info = h.w(lambda tx: svc.get(tx, made["sandbox_id"]))
    assert info["state"] == "running" and info["worker_id"] == wid
    assert h.one("SELECT ready_at FROM containers WHERE id = ?", (made["container_id"],)) is not None
    h.w(
        lambda tx: workers.container_event(
            tx, wid, workers.ContainerEvent(made["container_id"], "exited", 3, "crashed (exit code 3)")
        )
    )
    info = h.w(lambda tx: svc.get(tx, made["sandbox_id"]))
    assert (info["state"], info["returncode"], info["result"]) == ("finished", 3, "failure")


@pytest.mark.parametrize(
    ("code", "reason", "result"),
    [
        (0, "exited (exit code 0)", "success"),
        (1, "crashed (exit code 1)", "failure"),
        (137, "out of memory: OOM-killed at its memory limit (exit code 137)", "oom"),
        (None, "stopped: timeout: the sandbox reached its timeout of 2 s", "timeout"),
        (None, "stopped: idle timeout: nothing ran in the sandbox for 2 s", "timeout"),
        (0, "terminated by request", "terminated"),
        (None, "failed to start: no such image", "error"),
        (None, "unschedulable: is a sandbox, which runs under ...", "error"),
    ],
)
def test_outcome_names_how_a_sandbox_ended(code: int | None, reason: str, result: str) -> None:
    assert svc.outcome(code, reason) == result


def test_tunnels_record_which_ports_are_raw_tcp_and_where_they_listen(h: Any) -> None:
    app_id = _app(h)
    spec = FunctionSpec(
        name="sandbox",
        module="__sandbox__",
        qualname="sandbox",
        sandbox={"command": [], "ports": [8000, 7000], "tcp_ports": [7000]},
    )
    made = dict(h.w(lambda tx: svc.create(tx, app_id, spec, None, {})))
    sid = made["sandbox_id"]
    found = h.w(lambda tx: svc.tunnels(tx, sid))
    assert {p: (tcp, listen) for p, (_, tcp, listen) in found.items()} == {
        8000: (False, None),
        7000: (True, None),
    }
    token = found[7000][0]
    assert len(token) >= 32 and token != found[8000][0]
    h.w(lambda tx: svc.set_listen_port(tx, token, 41234))
    assert h.w(lambda tx: svc.tunnels(tx, sid))[7000][2] == 41234
    assert h.w(lambda tx: svc.tunnel(tx, token)) == (sid, 7000)
    other = _create(h, app_id)["sandbox_id"]
    assert h.w(lambda tx: svc.running(tx, [sid, other, "sb-missing"])) == {sid, other}
    h.w(lambda tx: svc.terminate(tx, sid))
    assert h.w(lambda tx: svc.running(tx, [sid, other])) == {other}
