"""Functions that need isolation (block_network=True) or a named runtime go only where it exists."""

from vivace.server.scheduler.placement import Request, WorkerCapacity, choose, unfit_reason


def _workers():
    return [
        WorkerCapacity("w-dev", 8, 8192, runtimes=("process",)),
        WorkerCapacity("w-iso", 2, 2048, cpu_used=1.0, runtimes=("crun", "runc", "process")),
    ]


def test_block_network_goes_only_to_a_worker_that_can_isolate():
    workers = _workers()
    placed = choose(Request("c1", 0.5, 128, isolated=True), workers)
    assert placed is not None and placed.worker == "w-iso"
    # an ordinary function may go to either (packing prefers the busier one here)
    assert choose(Request("c2", 0.5, 128), workers) is not None


def test_no_isolating_worker_is_a_clear_reason():
    workers = [WorkerCapacity("w-dev", 8, 8192, runtimes=("process",))]
    reason = unfit_reason(Request("c1", 0.5, 128, isolated=True), workers)
    assert reason is not None and "block_network=True" in reason and "process" in reason
    assert unfit_reason(Request("c2", 0.5, 128), workers) is None


def test_a_runtime_no_worker_offers_is_a_clear_reason():
    reason = unfit_reason(Request("c1", 0.5, 128, runtime="runsc"), _workers())
    assert reason is not None and "'runsc'" in reason and "crun" in reason


def test_an_image_needs_a_runtime_that_stacks_layers():
    from vivace.server.scheduler.placement import Request, WorkerCapacity, choose, unfit_reason

    r = Request("ta-1", 1, 128, image=True)
    plain = WorkerCapacity("wk-p", 4, 4096, runtimes=("process", "bwrap"))
    oci = WorkerCapacity("wk-o", 4, 4096, runtimes=("crun", "process"))
    assert choose(r, [plain]) is None
    assert "starts from an image" in unfit_reason(r, [plain])
    assert choose(r, [plain, oci]).worker == "wk-o"
