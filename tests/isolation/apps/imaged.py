"""A function that runs in a custom image: what it sees comes from the image, not the host."""

import os
import sys

import vivace

HOST_FILE = os.environ.get("IMAGED_HOST_FILE", "/nonexistent")
CONF = os.environ.get("IMAGED_CONF", "/nonexistent")

image = (
    vivace.Image.debian_slim("3.11")
    .apt_install("jq")
    .pip_install("six==1.16.0", "cloudpickle==3.0.0")
    .env({"GREETING": "from the image"})
    .add_local_file(CONF, "/etc/imaged.conf", copy=True)
)
app = vivace.App("imaged", image=image)


@app.function()
def probe():
    import shutil

    import cloudpickle
    import six

    with open("/etc/imaged.conf") as f:
        conf = f.read()
    return {
        "six": six.__version__,
        "cloudpickle": cloudpickle.__version__,
        "greeting": os.environ.get("GREETING"),
        "python": sys.executable,
        "jq": shutil.which("jq"),
        "conf": conf,
        "host_file_visible": os.path.exists(HOST_FILE),
        "debian": os.path.exists("/etc/debian_version"),
    }
