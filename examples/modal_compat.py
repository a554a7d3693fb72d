"""An app written for Modal, run by Vivace unchanged: it imports `modal` and uses only Modal's API
(`modal.App`, `@app.function`, `@app.cls` with `modal.parameter`, `@modal.enter`, `@modal.method`).
`vivace run` makes `import modal` resolve to vivace, here and in the containers, so the code never
mentions Vivace; `modal run` would run the same file on Modal.

Run it with:  vivace run examples/modal_compat.py --name Ada --n 4
"""

import modal

app = modal.App("example-modal-compat")


@app.function()
def square(x: int) -> int:
    return x * x


@app.function()
def runs_locally() -> bool:
    return modal.is_local()


@app.cls()
class Greeter:
    greeting: str = modal.parameter(default="Hello")

    @modal.enter()
    def setup(self):
        self.suffix = "!"  # expensive setup (loading a model, opening a client) goes here

    @modal.method()
    def greet(self, name: str) -> str:
        return f"{self.greeting}, {name}{self.suffix}"


@app.local_entrypoint()
def main(name: str = "world", n: int = 3):
    print("squares:", list(square.map(range(n))))
    print("square.remote(7):", square.remote(7))
    print("modal.is_local() here:", modal.is_local(), "in a container:", runs_locally.remote())
    print(Greeter().greet.remote(name))
    print(Greeter(greeting="Bonjour").greet.remote(name))
    calls = [square.spawn(i) for i in (10, 20)]
    print("gathered:", modal.FunctionCall.gather(*calls))
