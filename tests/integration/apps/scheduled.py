"""A function the control plane calls every second while the app runs; each call puts its call id on a
Queue whose name the test sets."""

import os

import vivace

app = vivace.App("scheduled")
QUEUE = os.environ.get("VIVACE_TEST_TICK_QUEUE", "ticks")


@app.function(schedule=vivace.Period(seconds=1), env={"TICK_QUEUE": QUEUE})
def tick() -> None:
    queue = vivace.Queue.from_name(os.environ["TICK_QUEUE"], create_if_missing=True)
    queue.put(vivace.current_function_call_id())


@app.function(schedule=vivace.Cron("0 0 1 1 *"))
def new_year() -> None:
    pass
