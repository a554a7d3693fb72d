"""Classes, lifecycle hooks, concurrency and batching, as the SDK-surface tests use them."""

import asyncio
import os
import time

import vivace

app = vivace.App("sdk-surface")


@app.cls(scaledown_window=2)
class Model:
    size: int = vivace.parameter(default=1)
    name: str = vivace.parameter(default="m")
    blob: bytes = vivace.parameter(default=b"")
    loud: bool = vivace.parameter(default=False)

    @vivace.enter(snap=True)
    def first(self):
        self.order = ["snap"]

    @vivace.enter()
    def load(self):
        self.order.append("enter")
        self.weights = self.size * 10
        self.pid = os.getpid()

    @vivace.method()
    def predict(self, x):
        out = (self.name, x * self.weights, self.blob, self.loud)
        return out

    @vivace.method()
    def info(self):
        return {"order": self.order, "pid": os.getpid(), "task": os.environ.get("MODAL_TASK_ID")}

    @vivace.method()
    def count(self, n):
        for i in range(n):
            yield i * self.size

    @vivace.method()
    async def slow_double(self, x):
        await asyncio.sleep(0.01)
        return 2 * x

    @vivace.exit()
    def bye(self):
        print(f"exit hook ran in {vivace.current_input_id()} size={self.size}", flush=True)


@app.cls()
class BrokenEnter:
    @vivace.enter()
    def load(self):
        raise RuntimeError("weights missing")

    @vivace.method()
    def predict(self, x):
        return x


@app.function(max_containers=1)
@vivace.concurrent(max_inputs=10)
def overlap(i):
    start = time.time()
    time.sleep(0.5)
    return (os.environ.get("MODAL_TASK_ID"), start, time.time(), vivace.current_input_id())


@app.function(max_containers=1)
@vivace.concurrent(max_inputs=10)
async def overlap_async(i):
    start = time.time()
    await asyncio.sleep(0.5)
    return (os.environ.get("MODAL_TASK_ID"), start, time.time(), vivace.current_input_id())


@app.function(scaledown_window=30)
@vivace.concurrent(max_inputs=20, target_inputs=4)
def hold(i):
    time.sleep(3)
    return os.environ.get("MODAL_TASK_ID")


@app.function(max_containers=1)
@vivace.batched(max_batch_size=4, wait_ms=300)
def batch_square(xs, scale=None):
    if any(x < 0 for x in xs):
        raise ValueError(f"negative in batch of {len(xs)}")
    return [(x * x, len(xs)) for x in xs]


@app.cls(max_containers=1)
class Batcher:
    offset: int = vivace.parameter(default=0)

    @vivace.batched(max_batch_size=8, wait_ms=200)
    @vivace.method()
    def add(self, xs, ys):
        return [x + y + self.offset for x, y in zip(xs, ys, strict=True)]


@app.function()
def square(x):
    return x * x


@app.function()
def fan_out(n):
    """Calls the app's other functions and classes from inside a container."""
    return {
        "map": sum(square.map(range(n))),
        "remote": square.remote(n),
        "method": Model(size=2).predict.remote(1)[1],
        "spawned": square.spawn(3).get(),
        "container": os.environ["MODAL_TASK_ID"],
    }


@app.function(restrict_modal_access=True)
def restricted():
    try:
        square.remote(2)
    except vivace.exception.PermissionDeniedError as err:
        return f"denied: {err}"
    return "allowed"


@app.function(max_containers=1)
@vivace.concurrent(max_inputs=4)
async def sleeper(seconds):
    await asyncio.sleep(seconds)
    return seconds


@app.function(max_containers=1)
@vivace.concurrent(max_inputs=4)
def spinner(seconds):
    end = time.time() + seconds
    while time.time() < end:  # pure Python: a cancellation interrupts it between bytecodes
        pass
    return seconds
