"""Version 2 of the app "draining": ``slow`` returns at once."""

import vivace

app = vivace.App("draining")


@app.function(timeout=60)
def slow() -> str:
    return "v2"
