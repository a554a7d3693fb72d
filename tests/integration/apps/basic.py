import os
import time

import vivace

app = vivace.App("basic")


class CustomError(Exception):
    pass


@app.function(max_containers=3)
def square(x):
    return x * x


@app.function()
def add(a, b=0):
    return a + b


@app.function()
def fail(msg):
    raise CustomError(msg)


@app.function()
def task_id(_=None):
    return os.environ["VIVACE_TASK_ID"], vivace.current_input_id(), vivace.current_function_call_id()


@app.function()
def countdown(n):
    yield from range(n, 0, -1)


@app.function()
def gen_then_fail(n):
    yield from range(n)
    raise CustomError("after items")


@app.function(timeout=1)
def sleepy(seconds):
    time.sleep(seconds)
    return seconds


@app.function()
def slow(seconds):
    time.sleep(seconds)
    return seconds


@app.function(retries=vivace.Retries(max_retries=2, initial_delay=0.0, backoff_coefficient=1.0))
def flaky(path, fail_times):
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        attempts = len(f.read())
    if attempts <= fail_times:
        raise CustomError(f"attempt {attempts}")
    return attempts


@app.function(single_use_containers=True)
def single(_):
    return os.environ["VIVACE_TASK_ID"]


@app.function()
def hello_log(x):
    print(f"hello from input {x}")
    return x


@app.function(cpu=512)
def huge(x):
    return x


@app.function(retries=vivace.Retries(max_retries=1, initial_delay=1.0))
def flaky_delayed(path):
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        attempts = len(f.read())
    if attempts == 1:
        raise CustomError("first attempt fails")
    return attempts


@app.function()
def freeze_me(path):
    if os.path.exists(path):
        return "thawed"
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
    return "slept"
