"""A function that keeps one warm container: try `vivace run -d examples/warm.py`, then
`vivace container list` and `vivace container exec <id> python -c "print('hi')"`."""

import time

import vivace

app = vivace.App("warm")


@app.function(min_containers=1)
def ping(x=None):
    return "pong"


@app.function()
def slow(seconds: float = 60.0):
    time.sleep(seconds)
    return seconds


@app.local_entrypoint()
def main():
    print(ping.remote())
