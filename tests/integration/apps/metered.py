"""Functions whose containers the metering tests bill: one burns CPU, one holds inputs."""

import os
import time

import vivace

app = vivace.App("metered")


@app.function(scaledown_window=2, cpu=0.5, memory=256)
def burn(seconds):
    """Spin on the CPU for ``seconds`` of CPU time; return what ran it."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return os.getpid(), os.environ["VIVACE_TASK_ID"], time.process_time() - start


@app.function(scaledown_window=2)
def nap(seconds):
    time.sleep(seconds)
    return os.environ["VIVACE_TASK_ID"]


limited = vivace.App("metered-limited")


@limited.function(scaledown_window=2)
def work(x):
    return x * 2
