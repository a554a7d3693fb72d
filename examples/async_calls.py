"""Async all the way: an `async def` local entrypoint awaits remote calls with `.remote.aio(...)`
and iterates `.map.aio(...)` with `async for`. An `async def` function marked
`@vivace.concurrent(max_inputs=...)` lets one container work on several inputs at once.

Run it with:  vivace run examples/async_calls.py
"""

import asyncio
import os
import time

import vivace

app = vivace.App("async-calls")


@app.function()
def double(x: int) -> int:
    return 2 * x


@app.function(max_containers=1)
@vivace.concurrent(max_inputs=8)
async def fetch(url: str):
    start = time.time()
    await asyncio.sleep(1.0)  # stands in for a slow network request
    return os.environ["VIVACE_TASK_ID"], start, time.time()


def peak_overlap(spans):
    """The most spans that were in progress at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


@app.local_entrypoint()
async def main():
    print("double.remote.aio(21) =", await double.remote.aio(21))

    doubled = [x async for x in double.map.aio(range(5))]
    print("double.map.aio(range(5)) =", doubled)

    both = await asyncio.gather(double.remote.aio(1), double.remote.aio(2))
    print("asyncio.gather of two calls =", both)

    urls = [f"https://example.invalid/page/{i}" for i in range(8)]
    results = [r async for r in fetch.map.aio(urls)]
    containers = {task for task, _, _ in results}
    peak = peak_overlap([(start, end) for _, start, end in results])
    print(f"fetch: {len(results)} inputs in {len(containers)} container(s), {peak} at once")
