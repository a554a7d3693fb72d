"""One endpoint, run twice in a row (as ``vivace serve`` restarts an app) by test_web_endpoints.py."""

import vivace

app = vivace.App("webrestart")


@app.function()
@vivace.fastapi_endpoint()
def ping():
    return vivace.current_function_call_id()
