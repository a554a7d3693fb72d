"""Generators: a function (or a class method) that yields streams its items back one by one, so the
caller can use the first ones before the last are made. Call it with `.remote_gen(...)`.

Run it with:  vivace run examples/generators.py
"""

import time

import vivace

app = vivace.App("generators")


@app.function()
def countdown(start: int):
    for n in range(start, 0, -1):
        time.sleep(0.1)  # pretend each step takes a while
        yield n


@app.cls()
class Tokenizer:
    lowercase: bool = vivace.parameter(default=False)

    @vivace.method()
    def tokens(self, text: str):
        for word in text.split():
            yield word.lower() if self.lowercase else word


@app.local_entrypoint()
def main():
    for n in countdown.remote_gen(3):
        print("countdown:", n)
    print("liftoff")

    text = "Generators Stream Results"
    print("tokens:", list(Tokenizer().tokens.remote_gen(text)))
    print("lowercase tokens:", list(Tokenizer(lowercase=True).tokens.remote_gen(text)))
