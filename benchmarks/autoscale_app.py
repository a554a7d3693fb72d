"""The burst ``benchmarks/autoscale.py`` sends: one-second inputs on a function allowed 20 containers.

Containers import this module by name. ``CONTAINER`` is drawn once per import, so it names the
container an input ran in.
"""

import uuid

import vivace
from benchmarks.autoscale_work import CPU, MAX_CONTAINERS, one_second

CONTAINER = uuid.uuid4().hex
app = vivace.App("bench-autoscale")


@app.function(max_containers=MAX_CONTAINERS, cpu=CPU, scaledown_window=2)
def second(i: int) -> tuple[str, float, float]:
    return one_second(CONTAINER)
