import pytest

import vivace
from vivace import exception as exc
from vivace._sdk.serialization import pack_exception, serialize, unpack_exception


def decorate(**kw):
    app = vivace.App("t")
    return app.function(serialized=True, **kw)(lambda x: x)


def test_defaults_and_tuples():
    app = vivace.App("t")

    f = app.function(cpu=(0.5, 2), memory=(256, 512), retries=vivace.Retries(max_retries=3), timeout=10)(
        module_level
    )
    s = f.spec
    assert (s.cpu, s.cpu_limit, s.memory, s.memory_limit, s.timeout) == (0.5, 2, 256, 512, 10)
    assert s.retries.max_retries == 3 and s.module == __name__ and s.qualname == "module_level"
    assert s.ephemeral_disk is None
    assert decorate(ephemeral_disk=10 * 1024).spec.ephemeral_disk == 10 * 1024


def module_level(x):
    return x


def test_nested_functions_need_serialized():
    app = vivace.App("t")
    with pytest.raises(exc.InvalidError, match="serialized=True"):
        app.function()(lambda: None)
    assert app.function(serialized=True)(lambda: 1).spec.serialized


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"max_containers": 1, "min_containers": 2}, "max_containers"),
        ({"cpu": "two"}, "cpu"),
        ({"memory": 1.5}, "memory"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 90000}, "timeout"),
        ({"scaledown_window": 1}, "scaledown_window"),
        ({"retries": 11}, "retries"),
        ({"retries": "x"}, "retries"),
        ({"keep_warm": 1}, "min_containers"),
        ({"concurrency_limit": 1}, "max_containers"),
        ({"container_idle_timeout": 5}, "scaledown_window"),
        ({"allow_concurrent_inputs": 5}, "concurrent"),
        ({"bogus": 1}, "bogus"),
        ({"env": {"A": 1}}, "env"),
        ({"image": object()}, "vivace.Image"),
        ({"ephemeral_disk": 0}, "ephemeral_disk"),
        ({"ephemeral_disk": "1G"}, "ephemeral_disk"),
        ({"ephemeral_disk": 4 << 20}, "ephemeral_disk"),
    ],
)
def test_bad_parameters_are_typed_errors(kw, match):
    with pytest.raises(exc.InvalidError, match=match):
        decorate(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"cloud": "aws"},
        {"region": "us"},
        {"nonpreemptible": True},
    ],
)
def test_later_features_fail_clearly(kw):
    with pytest.raises(exc.NotImplementedYetError, match="not have yet"):
        decorate(**kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"volumes": {"/d": object()}}, "must be a vivace.Volume"),
        ({"volumes": ["/d"]}, "dict of mount point"),
        ({"volumes": {"data": vivace.Volume.from_name("v")}}, "absolute path"),
        ({"volumes": {"/usr/lib/x": vivace.Volume.from_name("v")}}, "cannot be mounted"),
        ({"volumes": {"/a/../b": vivace.Volume.from_name("v")}}, "normalised"),
        ({"volumes": {"/d": vivace.Volume.from_name("v"), "/d/e": vivace.Volume.from_name("w")}}, "nest"),
        ({"secrets": [object()]}, "list of vivace.Secret"),
        ({"secrets": {"A": "b"}}, "list of vivace.Secret"),
    ],
)
def test_bad_secrets_and_volumes_are_typed_errors(kw, match):
    with pytest.raises(exc.InvalidError, match=match):
        decorate(**kw)
    with pytest.raises(exc.InvalidError, match=match):
        vivace.App("t", **kw)


def test_memory_snapshot_warns_once():
    app = vivace.App("t")
    with pytest.warns(UserWarning, match="no effect yet"):
        app.function(enable_memory_snapshot=True, name="snap1", serialized=True)(lambda: None)


def test_retries_validation():
    with pytest.raises(exc.InvalidError):
        vivace.Retries(max_retries=-1)
    with pytest.raises(exc.InvalidError):
        vivace.Retries(max_retries=1, backoff_coefficient=0.5)


def test_unpicklable_argument_is_a_serialization_error():
    import threading

    with pytest.raises(exc.SerializationError):
        serialize(threading.Lock())


class CustomError(Exception):
    pass


def test_exceptions_round_trip_with_remote_traceback():
    try:
        raise CustomError("boom")
    except CustomError as e:
        error, blob = pack_exception(e)
    err = unpack_exception(error, blob)
    assert type(err) is CustomError and str(err) == "boom"
    assert "Remote traceback" in "".join(err.__notes__) and "raise CustomError" in "".join(err.__notes__)


def test_unrebuildable_exception_becomes_remote_error():
    err = unpack_exception('{"type": "Weird", "message": "m", "traceback": "tb"}', None)
    assert isinstance(err, exc.RemoteError) and "Weird" in str(err)


def test_local_runs_in_process_and_id_needs_a_run():
    app = vivace.App("t")
    f = app.function(serialized=True)(lambda x: x + 1)
    assert f.local(1) == 2
    with pytest.raises(exc.InvalidError, match="no id yet"):
        _ = f.object_id


def test_exception_tree_root():
    for name in ("InvalidError", "NotFoundError", "FunctionTimeoutError", "RemoteError", "VersionError"):
        assert issubclass(getattr(exc, name), exc.Error)
    assert issubclass(exc.FunctionTimeoutError, TimeoutError)


@pytest.mark.parametrize(
    ("gpu", "choices"),
    [
        (None, None),
        ("H100", [{"type": "H100", "count": 1}]),
        ("h100:2", [{"type": "H100", "count": 2}]),
        (" a100-80gb : 8 ", [{"type": "A100-80GB", "count": 8}]),
        ("H100!", [{"type": "H100", "count": 1}]),
        ("any", [{"type": None, "count": 1}]),
        ("ANY:4", [{"type": None, "count": 4}]),
        ("B200+", [{"type": "B200", "count": 1}, {"type": "B300", "count": 1}]),
        ("rtx-pro-6000", [{"type": "RTX-PRO-6000", "count": 1}]),
        ("MyCard_9.1", [{"type": "MYCARD_9.1", "count": 1}]),  # not Modal's, still accepted
        (
            ["H100:2", "a100-80gb:2", "any:2"],
            [{"type": "H100", "count": 2}, {"type": "A100-80GB", "count": 2}, {"type": None, "count": 2}],
        ),
        (("L4", "l4", "T4"), [{"type": "L4", "count": 1}, {"type": "T4", "count": 1}]),
    ],
)
def test_gpu_spellings_normalize_to_choices_in_preference_order(gpu, choices):
    assert decorate(gpu=gpu).spec.gpu == choices


@pytest.mark.parametrize(
    ("gpu", "match"),
    [
        ("H100:0", "between 1 and 8"),
        ("H100:9", "between 1 and 8"),
        ("H100:-1", "TYPE:COUNT"),
        ("H100:two", "TYPE:COUNT"),
        ("H100:", "TYPE:COUNT"),
        ("", "TYPE:COUNT"),
        (":2", "TYPE:COUNT"),
        ("H100:1:2", "TYPE:COUNT"),
        ("RTX 4090", "not a GPU type"),
        ("H100?", "not a GPU type"),
        ("X" * 65, "not a GPU type"),
        (1, "got int"),
        (True, "got bool"),
        ({"type": "H100"}, "got dict"),
        ([], "no GPU"),
        (["H100", 2], "got int"),
        ([f"T{i}" for i in range(17)], "at most 16"),
    ],
)
def test_bad_gpu_values_are_invalid_errors_naming_the_parameter(gpu, match):
    with pytest.raises(exc.InvalidError, match="gpu") as info:
        decorate(gpu=gpu)
    assert info.match(match)


def test_gpu_spec_round_trips_and_the_server_side_check_refuses_bad_shapes():
    from vivace.protocol.functions import FunctionSpec, SpecError

    spec = decorate(gpu=["h100:2", "any"]).spec
    assert FunctionSpec.from_dict(spec.to_dict()).gpu == [
        {"type": "H100", "count": 2},
        {"type": None, "count": 1},
    ]
    base = {"name": "f", "module": "m", "qualname": "f"}
    assert FunctionSpec.from_dict(base).gpu is None
    for bad in (
        [],
        "H100",
        [{"type": "h100", "count": 1}],
        [{"type": "H100", "count": 0}],
        [{"type": "H100", "count": 9}],
        [{"type": "H100"}],
        [{"type": "H100", "count": 1, "extra": 1}],
        [{"type": 5, "count": 1}],
    ):
        with pytest.raises(SpecError, match="gpu"):
            FunctionSpec.from_dict({**base, "gpu": bad})


def test_a_secret_named_twice_takes_its_later_place() -> None:
    from vivace._sync import run_sync
    from vivace.app import resolve_storage

    class FakeSecret:
        def __init__(self, sid: str) -> None:
            self.sid = sid

        async def _resolve_for(self, app_id: str | None) -> str:
            return self.sid

    a, b = FakeSecret("st-aaaa"), FakeSecret("st-bbbb")
    ids, mounts = run_sync(resolve_storage("ap-x", [a, b, a], {}))
    assert ids == ["st-bbbb", "st-aaaa"] and mounts == {}
