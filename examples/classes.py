"""A small "model server" as a class: `vivace.parameter()` fields choose the model, `@vivace.enter()`
loads it once per container, `@vivace.method()`s serve requests from the loaded state, and
`@vivace.exit()` runs when the container shuts down. `Model.with_options(...)` gives the same class
other resources, `Model.with_concurrency(...)` lets one container serve several requests at once.
The local entrypoint's typed parameters are command-line options.

Run it with:  vivace run examples/classes.py --size 2 --text hello
"""

import os
import threading
import time

import vivace

app = vivace.App("model-server")


@app.cls(cpu=0.25, memory=256)
class Model:
    size: int = vivace.parameter(default=1)
    name: str = vivace.parameter(default="echo")

    @vivace.enter()
    def load(self):
        print(f"loading {self.name} (size {self.size})")
        time.sleep(0.2)  # stands in for reading weights from disk
        self.weights = list(range(1, self.size + 1))
        self.requests = 0
        self.lock = threading.Lock()

    @vivace.method()
    def predict(self, text: str) -> str:
        with self.lock:  # with_concurrency runs requests in threads
            self.requests += 1
        score = sum(self.weights) * len(text)
        return f"{self.name}-{self.size}({text!r}) = {score}"

    @vivace.method()
    def slow_predict(self, text: str):
        start = time.time()
        time.sleep(0.5)
        return self.predict(text), os.environ["VIVACE_TASK_ID"], start, time.time()

    @vivace.method()
    def stats(self) -> dict:
        return {"requests": self.requests, "container": os.environ["VIVACE_TASK_ID"]}

    @vivace.exit()
    def unload(self):
        print(f"unloading {self.name}-{self.size} after {self.requests} request(s)")


def peak_overlap(spans):
    """The most spans that were in progress at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


@app.local_entrypoint()
def main(size: int = 1, text: str = "hi"):
    model = Model(size=size)
    for word in (text, text.upper(), text[::-1]):
        print("predict:", model.predict.remote(word))
    stats = model.stats.remote()
    print(f"stats: {stats['requests']} requests served from one loaded model")

    big = Model.with_options(cpu=0.5, memory=512)(size=size, name="big")
    print("big predict:", big.predict.remote(text))
    other = big.stats.remote()["container"] != stats["container"]
    print("the big variant runs in its own container:", other)

    busy = Model.with_options(max_containers=1).with_concurrency(max_inputs=4)(size=size)
    results = list(busy.slow_predict.map([text] * 4))
    containers = {task for _, task, _, _ in results}
    peak = peak_overlap([(start, end) for _, _, start, end in results])
    print(f"concurrent: {len(results)} requests in {len(containers)} container(s), {peak} at once")
    # the @exit hooks run as the containers stop, after this function returns
    print(f"see the unload messages with: vivace app logs {app.app_id}")
