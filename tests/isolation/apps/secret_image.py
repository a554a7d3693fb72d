"""An image built with a named secret: its commands see the values; the image and its logs do not."""

import os

import vivace

SECRET = os.environ.get("SECRET_IMAGE_NAME", "build-token")


def record_token():
    """Runs at build time (run_function): proves it saw the secret without writing the value."""
    import hashlib

    with open("/fn-token.sha256", "w") as f:
        f.write(hashlib.sha256(os.environ["BUILD_TOKEN"].encode()).hexdigest())


image = (
    vivace.Image.debian_slim("3.11")
    .run_commands(
        'test -n "$BUILD_TOKEN"',
        'printf %s "$BUILD_TOKEN" | sha256sum | cut -d" " -f1 > /token.sha256',
        'echo "the token is $BUILD_TOKEN"',  # a careless build: the log must show *** instead
        secrets=[vivace.Secret.from_name(SECRET)],
    )
    .run_function(record_token, secrets=[vivace.Secret.from_name(SECRET)])
)
app = vivace.App("secret-image", image=image)


@app.function()
def probe():
    with open("/token.sha256") as f, open("/fn-token.sha256") as g:
        return {"sha": f.read().strip(), "fn_sha": g.read().strip(), "env": os.environ.get("BUILD_TOKEN")}
