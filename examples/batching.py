"""Dynamic batching: with `@vivace.batched(max_batch_size=..., wait_ms=...)` the function receives a
list of inputs and returns a list of results, one per input, in order. Callers still pass single
items (with `.remote` or `.map`); the container groups the inputs that arrive close together, which
is what makes a GPU model fast. Here a toy "embedding" stands in for the model.

Run it with:  vivace run examples/batching.py
"""

from collections import Counter

import vivace

app = vivace.App("batching")

VOWELS = set("aeiou")


@app.function(max_containers=1)
@vivace.batched(max_batch_size=8, wait_ms=200)
def embed(texts: list[str]) -> list[dict]:
    print(f"embedding a batch of {len(texts)}")
    return [
        {
            "text": text,
            "vector": [len(text), sum(c in VOWELS for c in text), text.count(" ") + 1],
            "batch_size": len(texts),
        }
        for text in texts
    ]


@app.local_entrypoint()
def main():
    texts = [f"sentence number {i}" for i in range(20)]
    results = list(embed.map(texts))
    print("in input order:", [r["text"] for r in results] == texts)
    print("first vector:", results[0]["vector"])
    items_per_size = Counter(r["batch_size"] for r in results)  # a batch of n adds n items of size n
    batches = sorted((size for size, n in items_per_size.items() for _ in range(n // size)), reverse=True)
    print(f"{len(results)} texts in {len(batches)} batches of sizes {batches}")

    one = embed.remote("a single call")  # a lone caller makes a batch of one
    print("single call:", one["vector"], "in a batch of", one["batch_size"])
