"""The warm pool's bookkeeping, over a fake runtime (the real hand-over runs in tests/isolation)."""

import asyncio
import functools
from pathlib import Path

import pytest

from vivace.runtime.main import WARM_READY
from vivace.worker.runtimes.base import ContainerSpec, ExitStatus, ImageRootfs
from vivace.worker.runtimes.oci import WarmContainer, WarmPool, image_key, oci_config


class FakeProc:
    def __init__(self) -> None:
        self.returncode = None
        self.exited = asyncio.Event()

    async def wait(self):
        await self.exited.wait()
        return self.returncode

    def die(self, code):
        self.returncode = code
        self.exited.set()


class FakeCgroup:
    def __init__(self, usage):
        self.usage = usage

    def memory_usage(self):
        return self.usage


class FakeHandle:
    def __init__(self, proc, usage, first_line):
        self.proc = proc
        self.cgroup = FakeCgroup(usage)
        self.stdout = asyncio.StreamReader()
        self.stdout.feed_data(first_line.encode() + b"\n")
        self.stderr = None
        self.killed = False

    def kill(self):
        self.killed = True
        if self.proc.returncode is None:
            self.proc.die(-9)

    async def wait(self):
        code = await self.proc.wait()
        return ExitStatus(code, "killed" if self.killed else "crashed")


class FakeRuntime:
    name = "fake"

    def __init__(self, network=None, usage=20 << 20, fail=False, first_line=WARM_READY):
        self.first_line = first_line
        self.ctx = type("Ctx", (), {"network": network})()
        self.started: list[WarmContainer] = []
        self.usage = usage
        self.fail = fail
        self.bad_images: set[str] = set()

    async def start_warm(self, image=None, *, sandbox=False):
        self.sandbox_starts = getattr(self, "sandbox_starts", 0) + int(sandbox)
        if self.fail or (image is not None and image.image_id in self.bad_images):
            raise OSError("no overlay here")
        proc = FakeProc()
        w = WarmContainer(
            f"warm-{len(self.started)}",
            Path("/nonexistent"),
            FakeHandle(proc, self.usage, self.first_line),
            proc,
            image_key(image),
        )
        self.started.append(w)
        return w


def spec(**kw):
    return ContainerSpec(
        container_id="ta-1", workdir=Path("/x"), socket_path=Path("/x/s"), source_dir=None, **kw
    )


def run(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


@run
async def test_fills_to_size_and_refills_after_a_take():
    rt = FakeRuntime()
    pool = WarmPool(rt, size=2)
    pool.REFILL_DELAY = 0.05
    pool.fill()
    await settle()
    assert len(pool.ready) == 2
    taken = pool.take(spec())
    assert taken is rt.started[0]
    await settle()
    assert len(pool.ready) == 1  # the replacement waits until the hand-over is done
    await asyncio.sleep(0.1)
    assert len(pool.ready) == 2 and len(rt.started) == 3
    await pool.close()


@run
async def test_size_zero_keeps_nothing():
    rt = FakeRuntime()
    pool = WarmPool(rt, size=0)
    assert pool.take(spec()) is None
    await settle()
    assert rt.started == []


@run
async def test_block_network_starts_cold_when_warm_ones_hold_a_network():
    rt = FakeRuntime(network=object())
    pool = WarmPool(rt, size=1)
    pool.fill()
    await settle()
    assert pool.take(spec(block_network=True)) is None
    assert len(pool.ready) == 1
    await pool.close()


@run
async def test_block_network_takes_a_warm_one_when_no_container_has_a_network():
    rt = FakeRuntime(network=None)
    pool = WarmPool(rt, size=1)
    pool.fill()
    await settle()
    assert pool.take(spec(block_network=True)) is not None
    await pool.close()


@pytest.mark.parametrize(("limit", "taken"), [(64, True), (30, False), (None, True)])
@run
async def test_memory_limit_must_leave_headroom_above_current_use(limit, taken):
    rt = FakeRuntime(usage=40 << 20)
    pool = WarmPool(rt, size=1)
    pool.fill()
    await settle()
    got = pool.take(spec(memory_limit=limit))
    assert (got is not None) == taken
    await pool.close()


@run
async def test_a_warm_container_that_dies_is_dropped_and_replaced_later():
    rt = FakeRuntime()
    pool = WarmPool(rt, size=1)
    pool.RETRY_AFTER = 0.05
    pool.fill()
    await settle()
    first = pool.ready[0]
    first.proc.die(1)
    await settle()
    assert first not in pool.ready
    assert pool.take(spec()) is None  # not handed out dead, and no hot restart loop
    await asyncio.sleep(0.15)
    assert len(pool.ready) == 1 and pool.ready[0] is not first
    await pool.close()


@run
async def test_start_failures_back_off():
    rt = FakeRuntime(fail=True)
    pool = WarmPool(rt, size=2)
    pool.fill()
    await settle()
    assert pool.ready == []
    pool.fill()  # within RETRY_AFTER: no new attempts
    await settle()
    assert sum(pool._filling.values()) == 0
    await pool.close()


@run
async def test_a_failed_start_is_retried_even_if_the_timer_fires_a_tick_early():
    import time

    rt = FakeRuntime(fail=True)
    pool = WarmPool(rt, size=2)
    pool.RETRY_AFTER = 0.05
    pool.fill()
    await settle()
    assert pool.ready == []
    # as if the retry's timer fired before the throttle's clock said RETRY_AFTER had passed (asyncio
    # runs timers up to a clock tick early): the retry must still start what is missing
    pool._failed_at = time.monotonic() + 1000
    rt.fail = False  # the runtime recovers (runsc failing under load, then not)
    await asyncio.sleep(0.2)
    assert len(pool.ready) == 2
    await pool.close()


@run
async def test_a_large_pool_fills_a_few_starts_at_a_time():
    rt = FakeRuntime()
    in_flight, most = [0], [0]
    start = rt.start_warm

    async def slow_start(image=None, *, sandbox=False):
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await asyncio.sleep(0.001)
        try:
            return await start(image, sandbox=sandbox)
        finally:
            in_flight[0] -= 1

    rt.start_warm = slow_start
    pool = WarmPool(rt, size=20, sandbox=True)
    pool.fill()
    for _ in range(200):
        await asyncio.sleep(0.002)
        if len(pool.ready) == 20:
            break
    assert len(pool.ready) == 20 and len(rt.started) == 20
    assert most[0] == pool.MAX_STARTING
    await pool.close()


@run
async def test_a_container_that_never_says_ready_is_discarded():
    rt = FakeRuntime(first_line="Traceback (most recent call last):")
    pool = WarmPool(rt, size=1)
    pool.fill()
    await settle()
    assert pool.ready == [] and rt.started[0].handle.killed
    assert pool.take(spec()) is None
    await pool.close()


@run
async def test_close_kills_what_is_ready_and_stops_filling():
    rt = FakeRuntime()
    pool = WarmPool(rt, size=2)
    pool.fill()
    await settle()
    ready = list(pool.ready)
    await pool.close()
    assert all(w.handle.killed for w in ready)
    pool.fill()
    await settle()
    assert len(rt.started) == 2


def test_warm_config_waits_for_its_function_and_hides_worker_variables():
    s = ContainerSpec(
        container_id="warm-1",
        workdir=Path("/w"),
        socket_path=Path("/w/sock/vivace.sock"),
        source_dir=Path("/w/src"),
        env={"VIVACE_SERVER": "http://secret", "USER_VAR": "1"},
    )
    cfg = oci_config(
        s, cgroups_path="/x", runtime_bundle=Path("/rt"), netns=None, rlimit_nofile=1024, warm=True
    )
    env = dict(e.split("=", 1) for e in cfg["process"]["env"])
    assert env["VIVACE_WARM"] == "1" and "VIVACE_SERVER" not in env and env["USER_VAR"] == "1"
    cold = oci_config(s, cgroups_path="/x", runtime_bundle=Path("/rt"), netns=None, rlimit_nofile=1024)
    assert "VIVACE_WARM=1" not in cold["process"]["env"]


def image(name, **kw):
    return ImageRootfs(name, [Path(f"/layers/{name}")], **kw)


@run
async def test_an_image_once_started_keeps_one_warm_container_on_its_root():
    rt = FakeRuntime()
    pool = WarmPool(rt, size=1)
    pool.REFILL_DELAY = 0.01
    pool.fill()
    await settle()
    numpy = image("im-numpy", env={"A": "1"})
    assert pool.take(spec(image=numpy)) is None  # the first start of an image is cold...
    await settle()
    assert sorted(str(w.image and w.image[0]) for w in pool.ready) == [
        "None",
        "im-numpy",
    ]  # ...later ones not
    assert pool.take(spec(image=image("im-numpy", env={"A": "2"}))) is None  # another env: another root
    await settle()
    got = pool.take(spec(image=numpy))
    assert got is not None and got.image == image_key(numpy)
    assert pool.take(spec()).image is None  # the generic one stays for base containers
    await pool.close()


@run
async def test_only_the_most_recent_images_keep_warm_containers_and_a_failing_one_is_dropped():
    rt = FakeRuntime()
    pool = WarmPool(rt, size=1)
    rt.bad_images.add("im-broken")
    pool.take(spec(image=image("im-broken")))
    await settle()
    assert not pool.images and all(w.image is None for w in pool.ready)
    for i in range(pool.IMAGES_KEPT + 2):
        pool.take(spec(image=image(f"im-{i}")))
        await settle()
    kept = {w.image[0] for w in pool.ready if w.image}
    assert kept == {f"im-{i}" for i in range(2, pool.IMAGES_KEPT + 2)}
    await pool.close()


@run
async def test_no_warm_pool_means_no_warm_images():
    rt = FakeRuntime()
    pool = WarmPool(rt, size=0)
    assert pool.take(spec(image=image("im-1"))) is None
    await settle()
    assert rt.started == [] and not pool.images


@run
async def test_a_sandbox_pool_starts_sandbox_stubs_and_serves_only_sandboxes_on_the_base():
    rt = FakeRuntime()
    pool = WarmPool(rt, size=2, sandbox=True)
    pool.fill()
    await settle()
    assert len(pool.ready) == 2 and rt.sandbox_starts == 2
    on_image = spec()
    on_image.image = ImageRootfs("im-numpy", [Path("/l")])
    assert pool.take(on_image) is None  # sandboxes on images start cold
    tty = spec()
    tty.tty = True
    assert pool.take(tty) is None  # a terminal is fixed when the container starts
    assert pool.take(spec()) is rt.started[0]
    assert not pool.images  # never keeps warm sandboxes per image
    await pool.close()
