"""Version 1 of the app "draining": ``slow`` says it started, then runs 8 s (longer than a worker's default
stop grace of 5 s)."""

import os
import time

import vivace

app = vivace.App("draining")
QUEUE = os.environ.get("VIVACE_TEST_DRAIN_QUEUE", "drain")


@app.function(env={"DRAIN_QUEUE": QUEUE}, timeout=60)
def slow() -> str:
    vivace.Queue.from_name(os.environ["DRAIN_QUEUE"], create_if_missing=True).put("started")
    time.sleep(8)
    return "v1"
