"""Where the control plane is and how to authenticate: env vars, ``~/.vivace.toml`` profiles, or the
embedded local daemon under ``VIVACE_HOME`` (default ``~/.vivace``).

``VIVACE_*`` names win; ``MODAL_*`` spellings of the same settings are accepted too.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from vivace.exception import AuthError, InvalidError


@dataclass(frozen=True)
class Settings:
    server_url: str | None
    token_id: str | None
    token_secret: str | None
    home: Path


def _env(name: str) -> str | None:
    return os.environ.get(f"VIVACE_{name}") or os.environ.get(f"MODAL_{name}") or None


def vivace_home() -> Path:
    return Path(os.environ.get("VIVACE_HOME") or Path.home() / ".vivace")


def load_settings() -> Settings:
    url, tid, sec = _env("SERVER_URL"), _env("TOKEN_ID"), _env("TOKEN_SECRET")
    profile_name = _env("PROFILE")
    cfg_path = Path(os.environ.get("VIVACE_CONFIG_PATH") or Path.home() / ".vivace.toml")
    if cfg_path.exists():
        try:
            data = tomllib.loads(cfg_path.read_text())
        except (tomllib.TOMLDecodeError, OSError) as err:
            raise InvalidError(f"cannot read {cfg_path}: {err}") from None
        if profile_name is None:
            profile_name = next((k for k, v in data.items() if isinstance(v, dict) and v.get("active")), None)
        if profile_name is not None:
            prof = data.get(profile_name)
            if not isinstance(prof, dict):
                raise InvalidError(f"profile {profile_name!r} is not in {cfg_path}")
            url = url or prof.get("server_url")
            tid = tid or prof.get("token_id")
            sec = sec or prof.get("token_secret")
    if url and not (tid and sec):
        raise AuthError(f"server {url} is configured but VIVACE_TOKEN_ID / VIVACE_TOKEN_SECRET are not")
    return Settings(url, tid, sec, vivace_home())
