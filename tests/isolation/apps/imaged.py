"""A function that runs in a custom image: what it sees comes from the image, not the host."""

import os
import sys

import vivace

HOST_FILE = os.environ.get("IMAGED_HOST_FILE", "/nonexistent")
CONF = os.environ.get("IMAGED_CONF", "/nonexistent")
ATTACHED = os.environ.get("IMAGED_ATTACHED", "/nonexistent")

built = (
    vivace.Image.debian_slim("3.11")
    .apt_install("jq")
    .pip_install("six==1.16.0", "cloudpickle==3.0.0")
    .env({"GREETING": "from the image"})
    .add_local_file(CONF, "/etc/imaged.conf", copy=True)
)
image = built.add_local_file(ATTACHED, "/etc/attached.txt")  # copy=False: attached at start, no rebuild
app = vivace.App("imaged", image=image)


@app.function()
def probe():
    import shutil

    import cloudpickle
    import six

    with open("/etc/imaged.conf") as f:
        conf = f.read()
    with open("/etc/attached.txt") as f:
        attached = f.read()
    return {
        "six": six.__version__,
        "cloudpickle": cloudpickle.__version__,
        "greeting": os.environ.get("GREETING"),
        "python": sys.executable,
        "jq": shutil.which("jq"),
        "conf": conf,
        "attached": attached,
        "host_file_visible": os.path.exists(HOST_FILE),
        "debian": os.path.exists("/etc/debian_version"),
    }
