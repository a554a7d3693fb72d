"""Version 2 of the app "versioned": ``which`` changed, ``only_in_v1`` removed."""

import vivace

app = vivace.App("versioned")


@app.function()
def which() -> str:
    return "v2"
