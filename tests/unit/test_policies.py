from hypothesis import given
from hypothesis import strategies as st

from vivace.protocol.functions import RetryPolicy
from vivace.server.autoscaler.policy import IdleContainer, Snapshot, desired_containers, plan
from vivace.server.scheduler.placement import Request, WorkerCapacity, could_ever_fit, place
from vivace.server.services.retry import decide_retry


def test_scales_to_load_within_bounds():
    assert desired_containers(Snapshot(backlog=10, running=0, live=0, max_containers=4)) == 4
    assert desired_containers(Snapshot(backlog=0, running=0, live=0, min_containers=2)) == 2
    assert desired_containers(Snapshot(backlog=3, running=1, live=0, buffer_containers=2)) == 6
    assert desired_containers(Snapshot(backlog=0, running=0, live=0, buffer_containers=2)) == 0


@given(st.integers(0, 500), st.integers(0, 500), st.integers(0, 5), st.integers(0, 5), st.integers(1, 8))
def test_desired_always_within_min_max(backlog, running, lo, extra, target):
    s = Snapshot(backlog, running, 0, min_containers=lo, max_containers=lo + extra, target_inputs=target)
    assert lo <= desired_containers(s) <= lo + extra


def test_idle_containers_stop_only_after_window_longest_idle_first():
    idle = (IdleContainer("a", 100.0), IdleContainer("b", 50.0), IdleContainer("c", 119.0))
    s = Snapshot(backlog=0, running=0, live=3, scaledown_window=10, idle=idle)
    assert plan(s, now=120.0).stop == ("b", "a")
    assert plan(s, now=55.0).stop == ()


def test_scale_up_starts_the_difference():
    assert plan(Snapshot(backlog=5, running=0, live=2, max_containers=4), now=0).start == 2


def test_placement_packs_and_respects_capacity():
    w1, w2 = WorkerCapacity("w1", 2, 1024), WorkerCapacity("w2", 2, 1024, cpu_used=1)
    placed = place(
        [Request("c1", 1, 256), Request("c2", 1, 256), Request("c3", 1, 256), Request("c4", 4, 1)], [w1, w2]
    )
    assert placed["c1"].worker == "w2"  # the busier worker first
    assert len(placed) == 3 and "c4" not in placed
    assert w1.cpu_used + w2.cpu_used == 4


def test_placement_honours_runtime_and_feasibility():
    w = WorkerCapacity("w", 2, 1024, runtimes=("process",))
    assert place([Request("c", 1, 1, runtime="crun")], [w]) == {}
    assert not could_ever_fit(Request("c", 8, 1), [w])
    assert could_ever_fit(Request("c", 1, 1), [WorkerCapacity("w", 2, 1024, cpu_used=2)])


def test_retry_decisions():
    p = RetryPolicy(max_retries=2, initial_delay=1.0, backoff_coefficient=3.0)
    assert decide_retry(p, 1).retry and decide_retry(p, 1).delay == 1.0
    assert decide_retry(p, 2).delay == 3.0
    assert not decide_retry(p, 3).retry
    assert not decide_retry(RetryPolicy(), 1).retry
