"""``vivace.Secret``: environment variables a function's containers get (Modal's ``modal.Secret``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vivace import exception as exc
from vivace._sdk import dotenv
from vivace._sdk.connection import get_client
from vivace._sdk.objects import _Objects
from vivace._sync import run_sync
from vivace.protocol import objects as names
from vivace.protocol import secrets as rules
from vivace.runtime_api import is_local


def _checked(env: Any) -> dict[str, str]:
    problem = rules.env_problem(env)
    if problem:
        raise exc.InvalidError(problem)
    return dict(env)


def _key_list(keys: Any, what: str) -> list[str]:
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
        raise exc.InvalidError(f"{what} must be a list of variable names, got {type(keys).__name__}")
    out = list(keys)
    for key in out:
        problem = rules.key_problem(key)
        if problem:
            raise exc.InvalidError(problem)
    return out


class Secret:
    """Environment variables for a function's containers, stored encrypted by the server.

    ``Secret.from_name("openai", required_keys=["OPENAI_API_KEY"])`` names a secret created with
    ``vivace secret create openai OPENAI_API_KEY=...``; ``from_dict``, ``from_local_environ`` and
    ``from_dotenv`` make inline ones from values here, stored when the app registers its functions.
    Pass them as ``@app.function(secrets=[...])`` (or ``App(secrets=)``, ``@app.cls(secrets=)``);
    secrets apply after ``env=`` and in order, so a later secret's key wins. A ``Secret`` never shows
    its values: not in ``repr``, nor in any error.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        env: dict[str, str] | None = None,
        required_keys: Sequence[str] = (),
        ids: dict[str | None, str] | None = None,
    ) -> None:
        self._name = name
        self._env = env
        self._required = list(required_keys)
        self._ids: dict[str | None, str] = dict(ids or {})  # app id (None: named) -> secret id

    objects: _SecretObjects  # set below

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, env_dict: Mapping[str, str | None] | None = None) -> Secret:
        """An inline secret of these variables (a ``None`` value leaves its variable out, as in Modal)."""
        if env_dict is None:
            env_dict = {}
        if not isinstance(env_dict, Mapping):
            raise exc.InvalidError(f"from_dict takes a dict of str to str, not {type(env_dict).__name__}")
        return cls(env=_checked({k: v for k, v in env_dict.items() if v is not None}))

    @classmethod
    def from_local_environ(cls, env_keys: Sequence[str]) -> Secret:
        """An inline secret of these variables of this process's environment (each must be set).

        Inside a container (where the app's module is imported again) it reads nothing: the functions
        were registered, with the values, by the client.
        """
        keys = _key_list(env_keys, "env_keys")
        if not is_local():
            return cls(env={})
        missing = [k for k in keys if k not in os.environ]
        if missing:
            raise exc.InvalidError(f"not set in the local environment: {', '.join(missing)}")
        return cls(env=_checked({k: os.environ[k] for k in keys}))

    @classmethod
    def from_dotenv(cls, path: str | Path | None = None, *, filename: str = ".env") -> Secret:
        """An inline secret of a ``.env`` file's variables.

        Args:
            path: the file itself, or where to look for ``filename``: a directory, or a ``.py`` file
                (``from_dotenv(__file__)``) whose directory is taken; the nearest parent directory
                with the file wins. Default: the working directory.
            filename: the file's name when ``path`` is a directory.

        Read at once on the client; inside a container (no such file there) it reads nothing.
        """
        if not is_local():
            return cls(env={})
        return cls(env=_checked(dotenv.load(path, filename)))

    @classmethod
    def from_name(
        cls, name: str, *, environment_name: str | None = None, required_keys: Sequence[str] = ()
    ) -> Secret:
        """A named secret, looked up when first used; ``NotFoundError`` if it lacks ``required_keys``."""
        problem = names.name_problem(name)
        if problem:
            raise exc.InvalidError(problem)
        del environment_name  # one environment per control plane
        return cls(name=name, required_keys=_key_list(required_keys, "required_keys"))

    # -- resolution ----------------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return self._name

    async def _resolve_for(self, app_id: str | None) -> str:
        """This secret's id for a function of ``app_id``: a named one is looked up (its required keys
        checked); an inline one is stored for that app (once per app)."""
        if self._name is not None:
            if None not in self._ids:
                api = await get_client()
                body = {"name": self._name, "required_keys": self._required}
                out = await api.post_json("/v1/secrets/lookup", body)
                self._ids[None] = str(out["secret_id"])
            return self._ids[None]
        if app_id in self._ids:
            return self._ids[app_id]
        if self._env is None:
            raise exc.InvalidError("this inline Secret's values were left behind when it was pickled")
        if app_id is None:
            raise exc.InvalidError(
                "an inline Secret (from_dict, from_dotenv, ...) is used by an app's functions"
            )
        api = await get_client()
        out = await api.post_json("/v1/secrets/inline", {"app_id": app_id, "env": self._env})
        self._ids[app_id] = str(out["secret_id"])
        return self._ids[app_id]

    def hydrate(self) -> Secret:
        """Look a named secret up now (checking its required keys) instead of at first use."""
        if self._name is None:
            raise exc.InvalidError("only a named Secret (from_name) can be looked up on its own")
        run_sync(self._resolve_for(None))
        return self

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # pickled (e.g. in a function's closure) without its values: only names and ids travel
        return (_rebuild, (self._name, self._required, dict(self._ids)))

    def __repr__(self) -> str:
        if self._name is not None:
            return f"Secret.from_name({self._name!r})"
        n = len(self._env or {})
        return f"Secret(<inline, {n} key{'' if n == 1 else 's'}>)"


def _rebuild(name: str | None, required: list[str], ids: dict[str | None, str]) -> Secret:
    return Secret(name=name, required_keys=required, ids=ids)


class _SecretObjects(_Objects):
    """``Secret.objects``: create (with values), list and delete named secrets."""

    def __init__(self) -> None:
        super().__init__("secret")

    def create(  # type: ignore[override]
        self, name: str, env_dict: Mapping[str, str], *, allow_existing: bool = False, overwrite: bool = False
    ) -> None:
        """Store a named secret. An existing name is ``AlreadyExistsError``, unless ``allow_existing``
        (it is left as it is) or ``overwrite`` (its values are replaced)."""
        problem = names.name_problem(name)
        if problem:
            raise exc.InvalidError(problem)
        if not isinstance(env_dict, Mapping):
            raise exc.InvalidError(f"env_dict must be a dict of str to str, not {type(env_dict).__name__}")
        env = _checked(dict(env_dict))
        run_sync(self._create_with(name, env, allow_existing, overwrite))

    async def _create_with(
        self, name: str, env: dict[str, str], allow_existing: bool, overwrite: bool
    ) -> None:
        api = await get_client()
        try:
            await api.post_json("/v1/secrets", {"name": name, "env": env, "overwrite": overwrite})
        except exc.ConflictError as err:
            if not allow_existing:
                raise exc.AlreadyExistsError(str(err)) from None


Secret.objects = _SecretObjects()
