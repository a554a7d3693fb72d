"""GPU placement: model matching, counts, fallback order, one GPU per container, freeing."""

from hypothesis import given
from hypothesis import strategies as st

from vivace.server.scheduler.placement import (
    GpuChoice,
    Placement,
    Request,
    WorkerCapacity,
    could_ever_fit,
    gpu_type_matches,
    place,
    unfit_reason,
)


def gpu_worker(wid, *models, cpu=64.0, memory=512 * 1024, price=0.0):
    return WorkerCapacity(wid, cpu, memory, price=price, gpus=dict(enumerate(models)))


def want(rid, *choices, cpu=1.0, memory=1024):
    return Request(rid, cpu, memory, gpus=tuple(GpuChoice(t, n) for t, n in choices))


def test_model_matching():
    assert gpu_type_matches("H100", "H100")
    assert not gpu_type_matches("H100", "H200")
    assert not gpu_type_matches("H100", "H10")
    assert gpu_type_matches("A100", "A100-80GB") and gpu_type_matches("A100", "A100-40GB")
    assert not gpu_type_matches("A100-40GB", "A100-80GB")
    assert not gpu_type_matches("A100-80GB", "A100")
    assert gpu_type_matches("A10", "A10G") and gpu_type_matches("A10G", "A10")
    assert not gpu_type_matches("A10", "A100")
    assert gpu_type_matches(None, "T4")


def test_a_gpu_request_gets_distinct_indices_of_the_asked_model_and_waits_beyond_capacity():
    w = gpu_worker("w", "H100", "H100", "H100")
    placed = place([want("a", ("H100", 2)), want("b", ("H100", 2)), want("c", ("H100", 1))], [w])
    assert placed == {"a": Placement("w", (0, 1)), "c": Placement("w", (2,))}  # b waits: 1 left
    assert w.gpus_used == {0, 1, 2}
    assert place([want("d", ("H100", 1))], [w]) == {}  # nothing free on the next tick either


def test_cpu_and_memory_still_bound_gpu_work():
    w = gpu_worker("w", "L4", "L4", cpu=2)
    assert place([want("a", ("L4", 1), cpu=2), want("b", ("L4", 1), cpu=1)], [w]) == {
        "a": Placement("w", (0,))
    }


def test_fallback_order_first_feasible_choice_wins_even_when_a_later_one_is_cheaper():
    h100 = gpu_worker("h", "H100", price=3.0)
    a100 = gpu_worker("a", "A100-80GB", price=1.0)
    reqs = [want(r, ("H100", 1), ("A100-80GB", 1)) for r in ("r1", "r2", "r3")]
    assert place(reqs, [a100, h100]) == {"r1": Placement("h", (0,)), "r2": Placement("a", (0,))}


def test_any_matches_every_model_but_one_container_gets_one_model():
    w = gpu_worker("w", "T4", "L4", "L4")
    assert place([want("a", (None, 2))], [w]) == {"a": Placement("w", (1, 2))}  # not T4 + L4
    assert place([want("b", (None, 2))], [w]) == {}
    assert place([want("c", (None, 1))], [w]) == {"c": Placement("w", (0,))}


def test_family_requests_take_any_variant():
    w = gpu_worker("w", "A100-40GB", "A100-80GB")
    assert place([want("a", ("A100-80GB", 1)), want("b", ("A100", 1))], [w]) == {
        "a": Placement("w", (1,)),
        "b": Placement("w", (0,)),
    }


def test_gpu_work_packs_and_cpu_work_stays_off_idle_gpus():
    busy = gpu_worker("busy", "H100", "H100")
    busy.gpus_used = {0}
    idle = gpu_worker("idle", "H100", "H100")
    assert place([want("g", ("H100", 1))], [idle, busy]) == {"g": Placement("busy", (1,))}
    idle.cpu_used = 32  # busier than the cpu-only worker, but its GPUs are free
    cpu_only = WorkerCapacity("cpu", 64, 512 * 1024)
    assert place([Request("c", 1, 1)], [idle, cpu_only]) == {"c": Placement("cpu")}
    assert place([Request("d", 1, 1)], [idle, busy]) == {"d": Placement("busy")}  # no GPU free there


def test_freeing_a_containers_gpus_lets_the_next_one_in():
    w = gpu_worker("w", "H100", "H100")
    first = place([want("a", ("H100", 2))], [w])["a"]
    assert place([want("b", ("H100", 1))], [w]) == {}
    # the store rebuilds capacities each tick from the claims of live containers: a stopped one has none
    w.gpus_used -= set(first.gpus)
    w.cpu_used -= 1
    w.memory_used -= 1024
    assert place([want("b", ("H100", 1))], [w]) == {"b": Placement("w", (0,))}


def test_requests_without_gpus_never_get_any():
    w = gpu_worker("w", "H100")
    assert place([Request("c", 1, 1)], [w]) == {"c": Placement("w", ())}
    assert w.gpus_used == set()


def test_feasibility_and_reasons():
    workers = [gpu_worker("w1", "A100-80GB", "A100-80GB"), WorkerCapacity("w2", 8, 1024)]
    for w in workers:
        w.cpu_used, w.gpus_used = w.cpu, set(w.gpus)  # full now: feasibility ignores usage
    assert could_ever_fit(want("a", ("A100", 2)), workers)
    assert unfit_reason(want("a", ("A100", 2)), workers) is None
    assert not could_ever_fit(want("b", ("A100", 3)), workers)
    reason = unfit_reason(want("b", ("H100", 1), ("A100", 3)), workers)
    assert reason is not None
    assert "needs GPU H100:1 or A100:3" in reason and "2 x A100-80GB (1 worker)" in reason
    assert "no GPUs" in str(unfit_reason(want("c", (None, 1)), [WorkerCapacity("w", 8, 1024)]))
    assert "cpu=128" in str(unfit_reason(want("d", (None, 1), cpu=128), workers))
    assert unfit_reason(want("e", ("H100", 1)), []) is None  # no worker yet: wait for one


models = st.sampled_from(["H100", "A100-80GB", "A100-40GB", "L4"])


@given(
    st.lists(st.lists(models, max_size=8), min_size=1, max_size=4),
    st.lists(
        st.lists(st.tuples(st.one_of(st.none(), models, st.just("A100")), st.integers(1, 4)), max_size=3),
        max_size=30,
    ),
)
def test_no_gpu_is_ever_given_twice_and_every_grant_matches_a_choice(worker_models, request_choices):
    workers = [gpu_worker(f"w{i}", *ms) for i, ms in enumerate(worker_models)]
    reqs = [want(f"r{i}", *cs) for i, cs in enumerate(request_choices)]
    placed = place(reqs, workers)
    by_worker = {w.id: w for w in workers}
    seen: set[tuple[str, int]] = set()
    for r in reqs:
        if r.id not in placed:
            continue
        p = placed[r.id]
        w = by_worker[p.worker]
        claimed = {(p.worker, i) for i in p.gpus}
        assert not claimed & seen and len(claimed) == len(p.gpus)
        seen |= claimed
        assert all(i in w.gpus for i in p.gpus)
        if not r.gpus:
            assert p.gpus == ()
            continue
        got = [w.gpus[i] for i in p.gpus]
        assert len(set(got)) == 1  # one model per container
        # the choice it got is the first one that matches; earlier ones did not fit at that moment
        match = next(c for c in r.gpus if c.count == len(got) and gpu_type_matches(c.type, got[0]))
        assert match is not None
    assert {(w.id, i) for w in workers for i in w.gpus_used} == seen
