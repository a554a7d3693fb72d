import os

import vivace

NAMED = "vivace-test-secret-app"
INLINE_VALUE = "inline-5c1d0e9f-value"

app = vivace.App("secret-app")
inline = vivace.Secret.from_dict({"INLINE_TOKEN": INLINE_VALUE, "SHARED": "from-inline"})


@app.function(
    secrets=[inline, vivace.Secret.from_name(NAMED, required_keys=["NAMED_TOKEN"])],
    env={"SHARED": "from-env", "ONLY_ENV": "env"},
)
def read_env(keys):
    """The given variables as this container sees them (None when unset)."""
    return {k: os.environ.get(k) for k in keys}


@app.function(secrets=[inline])
def try_secret_api(name):
    """What the secret routes answer a container: lookups work, creating or deleting named ones does not."""
    out = {"listed": name in vivace.Secret.objects.list()}
    out["lookup"] = vivace.Secret.from_name(name).hydrate().name
    for what, attempt in (
        ("create", lambda: vivace.Secret.objects.create("from-container", {"K": "v"})),
        ("delete", lambda: vivace.Secret.objects.delete(name)),
    ):
        try:
            attempt()
            out[what] = "allowed"
        except vivace.exception.Error as err:
            out[what] = type(err).__name__
    return out


@app.function()
def no_secrets():
    return os.environ.get("INLINE_TOKEN")
