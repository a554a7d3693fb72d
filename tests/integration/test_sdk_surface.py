"""Classes, lifecycle hooks, @concurrent, @batched, variants and lookups by name, end to end."""

import time

import httpx
import pytest

import vivace
from vivace._version import __version__
from vivace.exception import InvalidError, NotFoundError

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def classes(app_loader):
    module = app_loader("classes")
    with module.app.run():
        yield module


@pytest.fixture(scope="module")
def api(cluster):
    env = cluster.client_env()
    headers = {
        "authorization": f"Bearer {env['VIVACE_TOKEN_ID']}:{env['VIVACE_TOKEN_SECRET']}",
        "x-vivace-version": __version__,
    }
    with httpx.Client(base_url=cluster.url, headers=headers, timeout=30) as c:
        yield c


def log_lines(api, app_id):
    return [line["line"] for line in api.get("/v1/logs", params={"app": app_id}).json()["lines"]]


def wait_for(pred, timeout=30.0, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def max_overlap(spans):
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_class_parameters_hooks_and_methods(classes):
    Model = classes.Model
    assert Model().predict.remote(2) == ("m", 20, b"", False)
    assert Model(size=3, name="x", blob=b"\x00\xff", loud=True).predict.remote(2) == (
        "x",
        60,
        b"\x00\xff",
        True,
    )
    info = Model().info.remote()
    assert info["order"] == ["snap", "enter"]  # snap=True hooks run first, then the others, once
    assert info["task"].startswith("ta-")  # MODAL_TASK_ID is the container id
    assert list(Model(size=2).count.remote_gen(4)) == [0, 2, 4, 6]
    assert Model().slow_double.remote(21) == 42
    assert list(Model().predict.map([1, 2, 3])) == [
        ("m", 10, b"", False),
        ("m", 20, b"", False),
        ("m", 30, b"", False),
    ]
    assert Model().predict.local(4) == ("m", 40, b"", False)  # runs @enter in this process first
    with pytest.raises(InvalidError, match="remote_gen"):
        Model().count.remote(3)


def test_each_parameter_set_and_option_set_gets_its_own_containers(classes):
    a = classes.Model(size=1).info.remote()["task"]
    assert classes.Model(size=1).info.remote()["task"] == a  # same parameters: same warm container
    b = classes.Model(size=2).info.remote()["task"]
    bigger = classes.Model.with_options(cpu=0.25, memory=160)
    obj = bigger(size=1)
    c = obj.info.remote()["task"]
    assert len({a, b, c}) == 3
    assert obj._service.spec.cpu == 0.25 and obj._service.spec.memory == 160
    conc = classes.Model.with_concurrency(max_inputs=5, target_inputs=2)()
    assert conc.slow_double.remote(4) == 8
    assert (conc._service.spec.max_inputs, conc._service.spec.target_inputs) == (5, 2)
    faster = classes.overlap.with_options(timeout=30)
    assert faster.remote(0)[0].startswith("ta-")
    assert faster.spec.timeout == 30 and faster.spec.max_inputs == 10


@pytest.mark.parametrize("name", ["overlap", "overlap_async"])
def test_concurrent_inputs_overlap_in_one_container(classes, name):
    fn = getattr(classes, name)
    results = list(fn.map(range(10)))
    assert len({task for task, _, _, _ in results}) == 1  # max_containers=1
    assert len({iid for _, _, _, iid in results}) == 10  # each input sees its own current_input_id()
    assert max_overlap([(s, e) for _, s, e, _ in results]) == 10  # all ten ran at the same time


@pytest.mark.parametrize("name", ["sleeper", "spinner"])
def test_cancelling_one_concurrent_input_leaves_the_others_running(classes, name):
    fn = getattr(classes, name)
    long, short = fn.spawn(600), fn.spawn(1.5)
    time.sleep(0.7)  # both run in the one container
    long.cancel()
    with pytest.raises(vivace.exception.InputCancellation):  # interrupted: not a TimeoutError
        long.get(timeout=20)
    assert short.get(timeout=20) == 1.5
    assert fn.remote(0.1) == 0.1  # the container still serves


def test_autoscaler_starts_ceil_n_over_target_inputs(classes):
    call = classes.hold.spawn_map(range(12))  # 12 inputs of 3 s, target_inputs=4: 3 containers
    seen = []
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        seen.append(classes.hold.get_current_stats().num_total_runners)
        time.sleep(0.1)
    assert len(call.get(timeout=60)) == 12
    assert max(seen) == 3, seen
    # with the three containers warm, inputs go to containers below their target first
    again = classes.hold.spawn_map(range(12)).get(timeout=60)
    assert len(again) == 12 and len(set(again)) >= 2, again


def test_batched_groups_inputs_and_fails_every_caller_in_a_failed_batch(classes):
    results = list(classes.batch_square.map(range(10)))
    assert [sq for sq, _ in results] == [x * x for x in range(10)]
    sizes = [n for _, n in results]
    assert max(sizes) > 1 and max(sizes) <= 4
    failed = list(classes.batch_square.map([5, 6, -1, 7], return_exceptions=True))
    assert all(isinstance(r, ValueError) and "negative in batch of 4" in str(r) for r in failed), failed
    assert classes.batch_square.remote(3) == (9, 1)  # a single caller passes a single item
    assert list(classes.Batcher(offset=100).add.map(range(10), range(10))) == [100 + 2 * i for i in range(10)]


def test_enter_failure_fails_the_inputs_without_a_restart_loop(classes, api):
    broken = classes.BrokenEnter()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="weights missing") as info:
            broken.predict.remote(1)
        assert "in load" in getattr(info.value, "__vivace_remote_traceback__", "")

    def live():
        rows = api.get("/v1/containers", params={"app": classes.app.app_id}).json()["containers"]
        return [r for r in rows if r["function"] == "BrokenEnter" and r["state"] != "stopped"]

    wait_for(lambda: not live(), timeout=20)
    time.sleep(2)
    assert not live()  # nothing restarts it while no input waits


def test_exit_hooks_run_on_scale_down_and_on_app_stop(app_loader, api):
    module = app_loader("lifecycle")
    with module.app.run():
        app_id = module.app.app_id
        short = module.Service.with_options(scaledown_window=2)(tag="short")
        assert short.ping.remote() == "pong short"
        assert module.Service(tag="long").ping.remote() == "pong long"
        wait_for(lambda: "exit short" in log_lines(api, app_id), timeout=30)  # scaled down after 2 s
        assert "exit long" not in log_lines(api, app_id)
    wait_for(lambda: "exit long" in log_lines(api, app_id), timeout=30)  # the app stopped
    lines = log_lines(api, app_id)
    assert lines.count("enter long") == 1 and lines.count("exit long") == 1


def test_containers_call_their_app_and_deployed_apps(classes, cluster):
    out = classes.fan_out.remote(4)
    assert out["map"] == 0 + 1 + 4 + 9 and out["remote"] == 16 and out["method"] == 20 and out["spawned"] == 9
    assert (
        classes.restricted.remote().startswith("denied: ")
        and "restrict_modal_access" in classes.restricted.remote()
    )


def test_a_container_acts_only_with_its_own_apps_scope(classes, cluster, api):
    from vivace.protocol import frames
    from vivace.protocol.versions import CONTAINER_HEADER

    classes.square.remote(1)
    rows = api.get("/v1/containers", params={"app": classes.app.app_id}).json()["containers"]
    cid = next(r["container_id"] for r in rows if r["function"] == "square" and r["state"] != "stopped")
    other = api.post("/v1/apps", json={"name": "someone-else"}).json()["app_id"]
    spec = {"name": "g", "module": "m", "qualname": "g"}
    resp = api.post(f"/v1/apps/{other}/functions", content=frames.encode({"spec": spec}))
    foreign = resp.json()["function_id"]
    as_container = {
        "authorization": f"Bearer {cluster.worker_token}",
        "x-vivace-version": __version__,
        CONTAINER_HEADER: cid,
    }
    with httpx.Client(base_url=cluster.url, headers=as_container, timeout=30) as c:
        mine = c.get("/v1/functions/lookup", params={"app_id": classes.app.app_id, "name": "square"})
        assert mine.status_code == 200, mine.text
        for method, path, kw in [
            ("POST", "/v1/calls", {"json": {"call_id": "fc-" + "ab" * 10, "function_id": foreign}}),
            ("POST", f"/v1/functions/{foreign}/variants", {"json": {"options": {}}}),
            ("GET", f"/v1/functions/{foreign}/stats", {}),
            ("GET", "/v1/functions/lookup", {"params": {"app_id": other, "name": "g"}}),
            ("GET", "/v1/apps", {}),  # not a route containers may call at all
            ("POST", "/v1/tokens", {"json": {"kind": "user"}}),
        ]:
            resp = c.request(method, path, **kw)
            assert resp.status_code == 403, (path, resp.text)
        forged = {**as_container, CONTAINER_HEADER: "ta-" + "0" * 20}
        assert c.get("/v1/version", headers=forged).status_code == 403  # no such running container
    with httpx.Client(
        base_url=cluster.url, headers={**as_container, "authorization": f"Bearer {cluster.user_token}"}
    ) as c:
        assert c.get("/v1/apps").status_code == 200  # the header means nothing on a user token
    api.post(f"/v1/apps/{other}/stop")


def test_deployed_functions_and_classes_by_name(app_loader):
    module = app_loader("deployed")
    module.app.deploy()
    try:
        lazy = vivace.Function.from_name("sdk-deployed", "triple")
        assert lazy.remote(5) == 15
        assert list(vivace.Function.from_name("sdk-deployed", "countdown").remote_gen(3)) == [3, 2, 1]
        Greeter = vivace.Cls.from_name("sdk-deployed", "Greeter")
        assert Greeter().greet.remote("ada") == "hello ada"
        assert Greeter(greeting="hi").greet.remote("bob") == "hi bob"
        assert vivace.App.lookup("sdk-deployed").app_id == module.app.app_id
        assert vivace.Function.from_name("sdk-deployed", "via_name").remote(4) == 12  # from a container
        stats = lazy.get_current_stats()
        assert stats.num_total_runners >= 1 and stats.backlog == 0
        lazy.update_autoscaler(min_containers=1)
        missing = vivace.Function.from_name("sdk-deployed", "nope")  # lazy: fails on first use
        with pytest.raises(NotFoundError, match="nope"):
            missing.remote(1)
        with pytest.raises(NotFoundError):
            vivace.App.lookup("never-deployed-app")
        created = vivace.App.lookup("made-on-demand", create_if_missing=True)
        assert created.app_id and vivace.App.lookup("made-on-demand").app_id == created.app_id
        created.stop()
        with pytest.raises(NotFoundError):
            Greeter().nope.remote(1)
    finally:
        module.app.stop()
