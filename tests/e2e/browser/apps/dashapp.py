"""An app whose output and errors are hostile HTML (app names are plain: the API checks them): the dashboard
must show them as text."""

import time

import vivace

app = vivace.App("dash-app")


@app.function(scaledown_window=60, cpu=0.25)
def shout(i):
    print(f'<script>window.__xss=2</script><img src=x onerror="window.__xss=1"> line {i}')
    time.sleep(0.05)
    return i


@app.function(scaledown_window=60, retries=0)
def explode():
    raise ValueError('<b onmouseover="window.__xss=3">boom</b>')
