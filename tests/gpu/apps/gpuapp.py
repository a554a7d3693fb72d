"""Functions that look at the GPUs their container was given."""

import os
import subprocess

import vivace

app = vivace.App("gpuapp")


def _look():
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    return {
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "nodes": sorted(n for n in os.listdir("/dev") if n.startswith("nvidia") and n[6:].isdigit()),
        "smi": smi.stdout.strip().splitlines(),
        "smi_rc": smi.returncode,
    }


@app.function(gpu="any")
def one_gpu():
    return _look()


@app.function()
def no_gpu():
    return {
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "nodes": sorted(n for n in os.listdir("/dev") if n.startswith("nvidia")),
    }
