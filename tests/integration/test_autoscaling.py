"""Autoscaling: warm reuse, max_containers, scale to zero, and a fresh start after it."""

import time

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scaling(app_loader):
    module = app_loader("scaling")
    with module.app.run():
        yield module


def max_overlap(spans):
    events = sorted(
        [(s, 1) for _, s, _ in spans] + [(e, -1) for _, _, e in spans], key=lambda x: (x[0], x[1])
    )
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_max_containers_bounds_parallelism(scaling):
    spans = list(scaling.slow_span.map(range(12)))
    assert len({cid for cid, _, _ in spans}) <= 4
    assert max_overlap(spans) == 4


def test_warm_reuse_then_scale_to_zero_then_restart(scaling):
    first = scaling.who.remote()
    assert all(scaling.who.remote() == first for _ in range(5))  # the warm container serves them all
    deadline = time.monotonic() + 30
    while scaling.who.get_current_stats().num_total_runners and time.monotonic() < deadline:
        time.sleep(0.5)
    assert scaling.who.get_current_stats().num_total_runners == 0  # scaled to zero after scaledown_window
    assert scaling.who.remote() != first  # the next call starts a new container


def test_update_autoscaler_keeps_a_warm_container(scaling):
    scaling.who.update_autoscaler(min_containers=1)
    deadline = time.monotonic() + 30
    while scaling.who.get_current_stats().num_total_runners < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert scaling.who.get_current_stats().num_total_runners == 1
    scaling.who.update_autoscaler(min_containers=0)
