"""Start work without waiting for it: `.spawn()` returns a `FunctionCall` at once, and
`vivace.FunctionCall.gather(...)` waits for several of them together. Also: an exception raised in a
container comes back as the same exception type, so an ordinary `except` catches it.

Run it with:  vivace run examples/parallel.py
"""

import time

import vivace

app = vivace.App("parallel")


@app.function()
def slow_add(a: int, b: int, seconds: float):
    start = time.time()
    time.sleep(seconds)
    return a + b, (start, time.time())


@app.function()
def slow_shout(text: str, seconds: float):
    start = time.time()
    time.sleep(seconds)
    return text.upper(), (start, time.time())


@app.function()
def sqrt(x: float) -> float:
    if x < 0:
        raise ValueError(f"cannot take the square root of {x}")
    return x**0.5


@app.local_entrypoint()
def main():
    calls = [slow_add.spawn(2, 3, 2.0), slow_shout.spawn("hello", 2.0)]
    print("spawned", len(calls), "calls")  # both are running while we wait
    (total, add_span), (shout, shout_span) = vivace.FunctionCall.gather(*calls)
    print("gathered:", total, shout)
    overlapped = add_span[0] < shout_span[1] and shout_span[0] < add_span[1]
    print("the two calls ran at the same time:", overlapped)

    print("sqrt(16) =", sqrt.remote(16))
    try:
        sqrt.remote(-1)
    except ValueError as err:  # the container's ValueError, raised here
        print("caught ValueError:", err)
