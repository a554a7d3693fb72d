import os
import time

import vivace

app = vivace.App("scaling")


@app.function(max_containers=4, scaledown_window=2)
def slow_span(i):
    start = time.time()
    time.sleep(0.6)
    return os.environ["VIVACE_TASK_ID"], start, time.time()


@app.function(scaledown_window=2)
def who(_=None):
    return os.environ["VIVACE_TASK_ID"]
