"""The dashboard end to end: a real control plane and worker, `vivace dashboard`'s sign-in link, and
headless Chromium reading every page. User text that is hostile HTML (a function's output, an
exception's message) shows as text and runs nothing; the session only reads; the link works
once. Screenshots of each page go to ``VIVACE_DASHBOARD_SHOTS`` (default: the test's temp dir) for a
person to look at."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import sdk_pointed_at
from tests.e2e.browser.conftest import CHROMIUM

from vivace._version import __version__
from vivace.server.services import metering
from vivace.server.services.metering import Prices
from vivace.testing.cluster import LocalCluster

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
APP_FILE = Path(__file__).parent / "apps" / "dashapp.py"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    home = tmp_path_factory.mktemp("dash")
    with LocalCluster(home, runtimes=["process"]) as c, sdk_pointed_at(c):
        yield c


@pytest.fixture(scope="module")
def dashapp(cluster: LocalCluster) -> Iterator[Any]:
    """The hostile app, run: outputs, a failed call, metered containers."""
    cluster.plane.store.write_sync(
        lambda tx: metering.set_pools(tx, {"default": Prices(cpu_core_second=0.01, memory_gib_second=0.001)})
    )
    spec = importlib.util.spec_from_file_location("dashapp", APP_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dashapp"] = module
    spec.loader.exec_module(module)
    with module.app.run():
        assert list(module.shout.map(range(5))) == list(range(5))
        with pytest.raises(ValueError):
            module.explode.remote()
        yield module
    sys.modules.pop("dashapp", None)


def _sign_in_link() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "vivace.cli.main", "dashboard", "--no-browser"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    link = out.stdout.strip().splitlines()[-1]
    assert "/dashboard/login?code=tk-" in link, out.stdout
    return link


def test_the_dashboard_shows_everything_as_text_and_only_reads(
    cluster: LocalCluster, dashapp: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("VIVACE_DASHBOARD_SHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # not signed in: the page says how to sign in, and reads nothing
        page.goto(f"{cluster.url}/dashboard/")
        expect(page.get_by_text("Run `vivace dashboard` to open the dashboard again.")).to_be_visible()

        link = _sign_in_link()
        page.goto(link)
        assert page.url.startswith(f"{cluster.url}/dashboard/")
        # apps
        expect(page.locator("main table")).to_contain_text("dash-app")
        page.screenshot(path=str(shots / "apps.png"), full_page=True)

        page.goto(f"{cluster.url}/dashboard/#/calls")
        expect(page.locator("main table")).to_contain_text(
            'ValueError: <b onmouseover="window.__xss=3">boom</b>'
        )
        expect(page.locator("main table")).to_contain_text("5 / 5")
        page.locator("text=boom").first.hover()  # an onmouseover that ran would set __xss
        page.screenshot(path=str(shots / "calls.png"), full_page=True)

        page.goto(f"{cluster.url}/dashboard/#/containers")
        expect(page.locator("main table")).to_contain_text("shout")
        # per-phase start timing: the phases' bars have widths (set through the CSSOM: the policy allows no
        # style attributes)
        widths = page.locator(".bar .p-enter").evaluate_all(
            "els => els.map(e => e.getBoundingClientRect().width)"
        )
        assert widths and max(widths) > 0, widths
        page.screenshot(path=str(shots / "containers.png"), full_page=True)
        page.locator("main table a").first.click()
        expect(page.locator("main")).to_contain_text("Billed")
        expect(page.locator("main")).to_contain_text("Cold start")
        page.screenshot(path=str(shots / "container.png"), full_page=True)

        page.goto(f"{cluster.url}/dashboard/#/workers")
        expect(page.locator("main table")).to_contain_text(" of 2")  # the test worker's 2 cores
        expect(page.locator("main table")).to_contain_text("alive")
        page.screenshot(path=str(shots / "workers.png"), full_page=True)

        page.goto(f"{cluster.url}/dashboard/#/logs")
        page.locator("#log-app").select_option(dashapp.app.app_id)
        expect(page.locator("#log-lines")).to_contain_text(
            '<script>window.__xss=2</script><img src=x onerror="window.__xss=1"> line 4', timeout=20000
        )
        # live: a new line arrives while the page is open
        dashapp.shout.remote(99)
        expect(page.locator("#log-lines")).to_contain_text("line 99", timeout=20000)
        page.screenshot(path=str(shots / "logs.png"), full_page=True)

        page.goto(f"{cluster.url}/dashboard/#/usage")
        expect(page.locator("main")).to_contain_text("Cost per day, by app")
        assert page.locator(".chart svg rect").count() >= 1
        legend = page.locator(".chart .legend i").first.evaluate("e => getComputedStyle(e).backgroundColor")
        assert legend not in ("", "rgba(0, 0, 0, 0)"), legend
        expect(page.locator("main")).to_contain_text("dash-app")
        page.screenshot(path=str(shots / "usage.png"), full_page=True)

        for name in ("sandboxes", "volumes"):
            page.goto(f"{cluster.url}/dashboard/#/{name}")
            expect(page.locator("main h1")).to_have_text(name.capitalize())

        # nothing injected ran, and the page raised no error of its own
        assert page.evaluate("window.__xss") is None
        assert page.locator("main img, main script, main b").count() == 0
        assert errors == []

        # the session reads, never writes; the link worked once
        status = page.evaluate(
            """async (v) => (await fetch('/v1/apps/' + encodeURIComponent('x') + '/stop',
                   {method: 'POST', headers: {'x-vivace-version': v}})).status""",
            __version__,
        )
        assert status == 403
        again = page.goto(link)
        assert again is not None and again.status == 401
        page.goto(f"{cluster.url}/dashboard/#/apps")
        page.locator("a.signout").click()
        expect(page.locator("h1")).to_have_text("Signed out")
        page.goto(f"{cluster.url}/dashboard/#/apps")
        expect(page.get_by_text("This browser's session has ended.", exact=False)).to_be_visible()
        browser.close()


def test_dashboard_files_carry_a_strict_content_security_policy(cluster: LocalCluster) -> None:
    r = httpx.get(f"{cluster.url}/dashboard/")
    assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
    assert __version__ in r.text and "{{VERSION}}" not in r.text
    assert httpx.get(f"{cluster.url}/dashboard/../credentials.json").status_code == 404
    assert httpx.get(f"{cluster.url}/dashboard/secret.key").status_code == 404
    assert httpx.get(f"{cluster.url}/dashboard/login?code=tk-nope:nope").status_code == 401
    # a login code is not a token for anything else
    code = _sign_in_link().rsplit("code=", 1)[1]
    r = httpx.get(
        f"{cluster.url}/v1/apps", headers={"authorization": f"Bearer {code}", "x-vivace-version": __version__}
    )
    assert r.status_code == 401
