import pytest

from vivace.protocol import frames, ids
from vivace.protocol.functions import FunctionSpec, RetryPolicy, SpecError
from vivace.protocol.versions import check_compatible


def test_frames_round_trip_binary_payloads():
    blobs = [b"", b"\x00\xff" * 10, bytes(range(256))]
    header, out = frames.decode(frames.encode({"a": [1, 2]}, blobs))
    assert header == {"a": [1, 2]}
    assert out == blobs


@pytest.mark.parametrize("body", [b"", b"nope", b"VVF1\x00\x00\x00\x05{}", frames.encode({}, [b"x"])[:-1]])
def test_frames_reject_malformed(body):
    with pytest.raises(frames.FrameError):
        frames.decode(body)


def test_ids_are_typed():
    fc = ids.new_id(ids.FUNCTION_CALL)
    assert ids.is_id(fc, "fc") and not ids.is_id(fc, "ap") and not ids.is_id("fc-../x", "fc")


def spec(**kw):
    base = {"name": "f", "module": "m", "qualname": "f"}
    base.update(kw)
    return FunctionSpec.from_dict(base)


def test_spec_round_trips():
    s = spec(retries={"max_retries": 2, "backoff_coefficient": 2.0, "initial_delay": 1.0, "max_delay": 60.0})
    assert FunctionSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    "bad",
    [
        {"max_containers": 1, "min_containers": 2},
        {"timeout": 0},
        {"cpu": "lots"},
        {"memory": True},
        {"scaledown_window": 1},
        {"unknown_field": 1},
        {"env": {"A": 1}},
    ],
)
def test_spec_rejects_bad_fields(bad):
    with pytest.raises((SpecError, TypeError)):
        spec(**bad)


def test_retry_delay_grows_and_caps():
    p = RetryPolicy(max_retries=5, backoff_coefficient=2.0, initial_delay=1.0, max_delay=5.0)
    assert [p.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def test_version_compatibility():
    from vivace._version import __version__

    assert check_compatible(__version__, "x") is None
    assert "upgrade" in (check_compatible("99.0.0", "the worker") or "")
    assert check_compatible(None, "the worker") is not None
