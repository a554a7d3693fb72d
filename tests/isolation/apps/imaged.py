"""A function that runs in a custom image: what it sees comes from the image, not the host."""

import os
import sys

import vivace

HOST_FILE = os.environ.get("IMAGED_HOST_FILE", "/nonexistent")
CONF = os.environ.get("IMAGED_CONF", "/nonexistent")
ATTACHED = os.environ.get("IMAGED_ATTACHED", "/nonexistent")

MODEL = "tiny-model"


def download_weights(revision):
    """Runs at build time, in the image (run_function): what it writes becomes a layer."""
    os.makedirs("/models", exist_ok=True)
    with open("/models/weights.txt", "w") as f:
        f.write(f"{MODEL}@{revision} on {sys.version_info.major}.{sys.version_info.minor}")


built = (
    vivace.Image.debian_slim("3.11")
    .apt_install("jq")
    .pip_install("six==1.16.0", "cloudpickle==3.0.0")
    .env({"GREETING": "from the image"})
    .add_local_file(CONF, "/etc/imaged.conf", copy=True)
    .run_function(download_weights, args=("r1",))
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
    with open("/models/weights.txt") as f:
        weights = f.read()
    return {
        "six": six.__version__,
        "cloudpickle": cloudpickle.__version__,
        "greeting": os.environ.get("GREETING"),
        "python": sys.executable,
        "jq": shutil.which("jq"),
        "conf": conf,
        "attached": attached,
        "weights": weights,
        "host_file_visible": os.path.exists(HOST_FILE),
        "debian": os.path.exists("/etc/debian_version"),
    }
