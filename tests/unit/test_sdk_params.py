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
    ],
)
def test_bad_parameters_are_typed_errors(kw, match):
    with pytest.raises(exc.InvalidError, match=match):
        decorate(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"image": object()},
        {"gpu": "H100"},
        {"volumes": {"/d": object()}},
        {"secrets": [object()]},
        {"schedule": object()},
        {"cloud": "aws"},
        {"region": "us"},
        {"nonpreemptible": True},
        {"ephemeral_disk": 1024},
    ],
)
def test_later_features_fail_clearly(kw):
    with pytest.raises(exc.NotImplementedYetError, match="not have yet"):
        decorate(**kw)


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
