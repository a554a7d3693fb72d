"""Storage that outlives a call: a Volume of files shared by containers, a Dict and a Queue handed to
functions, and a Secret's values as environment variables.

Run it with:  vivace run examples/storage.py
Then look:    vivace volume ls storage-demo-notes   and   vivace dict items storage-demo-scores
"""

import os

import vivace

app = vivace.App("storage-demo")
notes = vivace.Volume.from_name("storage-demo-notes", create_if_missing=True)
scores = vivace.Dict.from_name("storage-demo-scores", create_if_missing=True)
greeting = vivace.Secret.from_dict({"GREETING": "hello"})  # in real use: Secret.from_name("...")


@app.function(volumes={"/notes": notes}, secrets=[greeting])
def write_note(name: str) -> str:
    """Each call may run in its own container: commit() publishes what it wrote."""
    with open(f"/notes/{name}.txt", "w") as f:
        f.write(f"{os.environ['GREETING']}, {name}")
    notes.commit()
    return name


@app.function(volumes={"/notes": notes})
def read_notes() -> list[str]:
    notes.reload()  # see what other containers committed since this one started
    texts = []
    for entry in sorted(os.listdir("/notes")):
        with open(os.path.join("/notes", entry)) as f:
            texts.append(f.read())
    return texts


@app.function()
def score(queue: vivace.Queue, results: vivace.Dict) -> int:
    """Take words from the queue until it stays empty; record each one's length."""
    done = 0
    for word in queue.iterate(item_poll_timeout=1.0):
        results[word] = len(word)
        done += 1
    return done


@app.local_entrypoint()
def main():
    names = ["ada", "grace", "linus"]
    print("wrote", list(write_note.map(names)))
    print("notes:", read_notes.remote())
    print("files:", sorted(entry.path for entry in notes.listdir("/")))

    with vivace.Queue.ephemeral() as queue:  # deleted when the block ends
        queue.put_many(["volume", "dict", "queue", "secret"])
        print("scored", score.remote(queue, scores), "words")
    print("scores:", dict(sorted(scores.items())))
