"""The dashboard in headless Chromium: Debian's ``chromium`` driven by Playwright. Where either is
missing the tests skip, except under ``CI=true``, where they fail (``.ci/install-browser.sh`` installs
Chromium; Playwright is in the locked environment)."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
from tests.conftest import require

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


def missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (uv sync)"
    if not os.path.exists(CHROMIUM):
        return "Debian's chromium is not installed (bash .ci/install-browser.sh)"
    return None


@pytest.fixture(autouse=True)
def _browser_available() -> None:
    require(missing(), "the browser tests")
