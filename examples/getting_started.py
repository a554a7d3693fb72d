"""Getting started: write a function once, then run it in this process (`.local`), in a container
(`.remote`) and over many inputs in parallel (`.map`). What the function prints in its container
shows up in your terminal as it happens, stdout on stdout and stderr on stderr.

Run it with:  vivace run examples/getting_started.py
"""

import sys

import vivace

app = vivace.App("getting-started")


@app.function()
def cube(x: int) -> int:
    where = "here" if vivace.is_local() else "in a container"
    print(f"cubing {x} {where}")
    if x % 5 == 0:
        print(f"note: {x} is a multiple of five", file=sys.stderr)
    return x**3


@app.local_entrypoint()
def main():
    print("local:", cube.local(3))  # an ordinary call in this process
    print("remote:", cube.remote(5))  # the same code, run in a container

    total = 0
    for result in cube.map(range(1, 11)):  # ten inputs, fanned out over containers
        total += result
    print("sum of cubes 1..10:", total)
