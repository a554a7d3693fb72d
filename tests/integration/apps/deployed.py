"""Deployed by the tests, then reached by name with Function.from_name and Cls.from_name."""

import vivace

app = vivace.App("sdk-deployed")


@app.function()
def triple(x):
    return 3 * x


@app.function()
def countdown(n):
    yield from range(n, 0, -1)


@app.cls()
class Greeter:
    greeting: str = vivace.parameter(default="hello")

    @vivace.method()
    def greet(self, name):
        return f"{self.greeting} {name}"


@app.function()
def via_name(x):
    """A deployed function reached by name from inside another container."""
    return vivace.Function.from_name("sdk-deployed", "triple").remote(x)
