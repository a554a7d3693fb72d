"""The call path end to end: the real control plane in-process, a real worker, real containers."""

import pytest

import vivace
from vivace import exception as exc

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def basic(app_loader):
    module = app_loader("basic")
    with module.app.run():
        yield module


def test_remote_and_map(basic):
    assert basic.square.remote(4) == 16
    assert list(basic.square.map(range(20))) == [i * i for i in range(20)]
    assert sorted(basic.square.map(range(20), order_outputs=False)) == sorted(i * i for i in range(20))
    assert list(basic.add.starmap([(1, 2), (3, 4)])) == [3, 7]
    assert list(basic.add.map([1, 2], kwargs={"b": 10})) == [11, 12]
    assert basic.square.local(3) == 9


def test_aio_forms(basic):
    import asyncio

    async def go():
        assert await basic.square.remote.aio(5) == 25
        assert [x async for x in basic.square.map.aio(range(4))] == [0, 1, 4, 9]
        assert [x async for x in basic.add.starmap.aio([(1, 2)])] == [3]
        assert [x async for x in basic.countdown.remote_gen.aio(2)] == [2, 1]
        assert await basic.square.for_each.aio(range(2)) is None
        spawned = await basic.square.spawn_map.aio(range(3))
        assert await spawned.get.aio() == [0, 1, 4]
        call = await basic.square.spawn.aio(6)
        return await call.get.aio()

    assert asyncio.run(go()) == 36


def test_spawn_get_from_id_and_gather(basic):
    call = basic.square.spawn(7)
    assert vivace.FunctionCall.from_id(call.object_id).get(timeout=60) == 49
    calls = [basic.square.spawn(i) for i in range(3)]
    assert vivace.FunctionCall.gather(*calls) == [0, 1, 4]
    with pytest.raises(exc.InvalidError):
        vivace.FunctionCall.from_id("not-an-id")


def test_spawn_map_and_for_each(basic):
    call = basic.square.spawn_map(range(5))
    assert call.get(timeout=60) == [0, 1, 4, 9, 16]
    assert basic.square.for_each(range(5)) is None


def test_get_timeout(basic):
    call = basic.slow.spawn(3)
    with pytest.raises(exc.TimeoutError):
        call.get(timeout=0.2)
    assert call.get() == 3


def test_remote_exception_is_the_original_type_with_traceback(basic):
    with pytest.raises(basic.CustomError, match="boom") as info:
        basic.fail.remote("boom")
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "Remote traceback" in notes and "raise CustomError(msg)" in notes


def test_map_return_exceptions(basic):
    out = list(basic.fail.map(["a", "b"], return_exceptions=True))
    assert [type(e).__name__ for e in out] == ["CustomError", "CustomError"]
    with pytest.raises(basic.CustomError):
        list(basic.fail.map(["a"]))


def test_generators(basic):
    assert list(basic.countdown.remote_gen(4)) == [4, 3, 2, 1]
    items = []
    with pytest.raises(basic.CustomError, match="after items"):
        for item in basic.gen_then_fail.remote_gen(3):
            items.append(item)
    assert items == [0, 1, 2]  # a generator that delivered items is not retried
    with pytest.raises(exc.InvalidError, match="remote_gen"):
        basic.countdown.remote(1)


def test_retries_then_success(basic, tmp_path):
    path = tmp_path / "attempts"
    assert basic.flaky.remote(str(path), 2) == 3
    path2 = tmp_path / "attempts2"
    with pytest.raises(basic.CustomError, match="attempt 3"):
        basic.flaky.remote(str(path2), 5)
    assert path2.read_text() == "xxx"  # 1 attempt + 2 retries


def test_timeout(basic):
    with pytest.raises(exc.FunctionTimeoutError):
        basic.sleepy.remote(30)
    assert basic.sleepy.remote(0) == 0  # a fresh container serves the next input


def test_context_inside_containers(basic):
    task, input_id, call_id = basic.task_id.remote()
    assert task.startswith("ta-") and input_id.startswith("in-") and call_id.startswith("fc-")
    assert vivace.is_local() and vivace.current_input_id() is None


def test_single_use_containers(basic):
    ids = list(basic.single.map(range(3)))
    assert len(set(ids)) == 3


def test_unpicklable_argument(basic):
    import threading

    with pytest.raises(exc.SerializationError):
        basic.square.remote(threading.Lock())


def test_cancel(basic):
    call = basic.slow.spawn(30)
    import time

    time.sleep(1.5)
    call.cancel()
    with pytest.raises(exc.InputCancellation):
        call.get(timeout=30)


def test_stats(basic):
    stats = basic.square.get_current_stats()
    assert stats.backlog == 0 and stats.num_total_runners >= 0


def test_a_function_no_worker_can_hold_fails_at_once(basic):
    with pytest.raises(exc.ResourceExhaustedError, match="needs cpu=512"):
        basic.huge.remote(1)


def test_startup_timeout_stops_slow_containers_and_fails_the_inputs(app_loader):
    module = app_loader("slowstart")
    with module.app.run(), pytest.raises(exc.ExecutionError, match="startup timed out"):
        module.never_ready.remote(1)


def test_a_retry_runs_after_its_delay_not_after_a_long_poll(basic, tmp_path):
    # initial_delay is 1 s; a retry nobody wakes up for would only run when the 25 s long-poll expires
    call = basic.flaky_delayed.spawn(str(tmp_path / "n"))
    assert call.get(timeout=15) == 2


def test_a_frozen_container_is_killed_and_its_input_retried(basic, tmp_path):
    import os
    import signal
    import time

    marker = tmp_path / "pid"
    call = basic.freeze_me.spawn(str(marker))
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, "the input never started"
        time.sleep(0.1)
    os.kill(int(marker.read_text()), signal.SIGSTOP)  # its heartbeat thread stops with it
    assert call.get(timeout=90) == "thawed"  # the worker killed it; the input ran again elsewhere
