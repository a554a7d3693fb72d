"""Functions that print, for the logs tests."""

import os

import vivace

app = vivace.App("logged")


@app.function(scaledown_window=2)
def shout(word):
    print(f"shout {word} from {os.environ['VIVACE_TASK_ID']}")
    return word


@app.function(scaledown_window=2)
def whisper(word):
    print(f"whisper {word}")
    return word
