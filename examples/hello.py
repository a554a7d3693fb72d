"""The hello-world of vivace: one function, called once and mapped over ten inputs."""

import vivace

app = vivace.App("demo")


@app.function(cpu=1, memory=512, timeout=60, retries=2)
def square(x):
    print(f"squaring {x}")
    return x * x


@app.local_entrypoint()
def main():
    print(square.remote(4), list(square.map(range(10))))
