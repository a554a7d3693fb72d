import time

import vivace

app = vivace.App("slowstart")

if not vivace.is_local():
    time.sleep(30)  # the container's import takes far longer than its startup_timeout


@app.function(startup_timeout=1)
def never_ready(x):
    return x
