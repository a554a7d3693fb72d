"""Web endpoints served from isolated containers on every runtime: a WSGI app in the runtime's own
process, and a server the function starts on a port inside the container, reached through the
gateway and the container's worker."""

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)


def test_a_wsgi_app_and_a_web_server_answer_through_the_gateway(iso):
    r = httpx.get(iso.web_wsgi.get_web_url() + "a/b", params={"c": "d"}, timeout=120)
    assert r.status_code == 200 and r.text.endswith(" /a/b?c=d"), r.text
    served = httpx.get(iso.web_files.get_web_url() + "index.txt", timeout=120)
    assert (served.status_code, served.text) == (200, "from inside\n")
    missing = httpx.get(iso.web_files.get_web_url() + "nothing.txt", timeout=120)
    assert missing.status_code == 404  # the server's own 404, passed through
