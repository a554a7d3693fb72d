"""A function in an image pulled from a registry, with a build step on top."""

import os

import vivace

REFERENCE = os.environ.get("PULLED_REFERENCE", "127.0.0.1:5000/vivace-test/pulled:latest")

image = vivace.Image.from_registry(REFERENCE).run_commands("echo built on top > /built-on-top")
app = vivace.App("pulled", image=image)


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@app.function()
def probe():
    import sys

    return {
        "hello": read("/opt/app/hello.txt"),
        "platform": read("/platform"),
        "built": read("/built-on-top"),
        "debian_version": os.path.exists("/etc/debian_version"),  # a whiteout in the top layer removed it
        "doc": sorted(os.listdir("/usr/share/doc")),  # an opaque directory in the top layer
        "cwd": os.getcwd(),
        "env": os.environ.get("FROM_REGISTRY"),
        "python": sys.executable,
    }


# an image from a Dockerfile (FROM the same registry image, passed as a build arg)
docker_image = vivace.Image.from_dockerfile(
    os.environ.get("PULLED_DOCKERFILE", "/nonexistent/Dockerfile"),
    context_dir=os.path.dirname(os.environ.get("PULLED_DOCKERFILE", "/nonexistent/Dockerfile")),
    build_args={"BASE": REFERENCE, "GREETING": "hi"},
)


@app.function(image=docker_image)
def dockerfile_probe():
    return {
        "cwd": os.getcwd(),
        "mode": os.environ.get("MODE"),
        "main": read("/srv/app/main.py"),
        "secret_copied": os.path.exists("/srv/app/secret.key"),  # .dockerignore'd
        "run": read("/srv/work/run.txt"),
        "hello": read("/opt/app/hello.txt"),  # from the FROM image
        "uid": os.getuid(),
        "whoami": read("/home/appuser/whoami"),
        "home": os.environ.get("HOME"),
    }


# an image without Python: its function cannot start, and says why
no_python = vivace.Image.from_registry(
    os.environ.get("PULLED_NO_PYTHON", "127.0.0.1:5000/vivace-test/nopy:1")
)


@app.function(image=no_python)
def pythonless():
    return "unreachable"
