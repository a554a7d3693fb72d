"""A Modal app written for Modal, unchanged: Vivace's commands resolve `import modal` to vivace.

Used three ways by tests/e2e/test_modal_compat.py: `vivace run FILE --n 3 --loud` (the local
entrypoint's parameters as options), `vivace run FILE::add --x 2` (a function's parameters as
options), `vivace run FILE::Scaler.scale --x 2` (a class method) and `vivace python FILE 5` (the `__main__` block, with its own sys.argv).
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Literal

import modal

app = modal.App("modal-compat")


def where() -> str:
    return "local" if modal.is_local() else "container"


@app.function()
def shout(name: str, n: int, loud: bool) -> str:
    text = "-".join([name] * n)
    return f"{text.upper() if loud else text} in {where()}"


@app.function()
def add(x: int, y: int = 40) -> str:
    return f"{x} + {y} = {x + y} in {where()}"


@app.cls()
class Scaler:
    factor: int = modal.parameter(default=3)

    @modal.enter()
    def load(self) -> None:
        self.ready = True

    @modal.method()
    def scale(self, x: int) -> str:
        return f"{x} * {self.factor} = {x * self.factor} in {where()}"

    @modal.method()
    def steps(self, n: int):
        yield from range(n)


@app.local_entrypoint()
def main(
    n: int,
    name: str = "x",
    loud: bool = False,
    when: datetime | None = None,
    mode: Literal["fast", "slow"] = "fast",
) -> None:
    """Shout NAME N times, remotely."""
    print("shout:", shout.remote(name, n, loud))
    print("when:", when.isoformat() if when else None, "mode:", mode)


if __name__ == "__main__":
    with app.run():
        print("argv:", sys.argv[1:])
        print("script:", add.remote(int(sys.argv[1])))
