"""Version 1 of the app "versioned" (version 2 is versioned_v2.py)."""

import vivace

app = vivace.App("versioned")


@app.function()
def which() -> str:
    return "v1"


@app.function()
def only_in_v1() -> str:
    return "here"
