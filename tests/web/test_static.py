"""The page's files as shipped and served, without a browser: in the wheel, same-origin only,
and served open with a locked-down policy even when the API needs keys."""

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import httpx

from app.web.routes import STATIC_DIR

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_every_file_of_the_page():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["app.web"]
    files = [p.relative_to(STATIC_DIR.parent).as_posix() for p in STATIC_DIR.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    assert {"static/index.html", "static/app.js", "static/style.css"} <= set(files)
    for name in files:
        assert any(fnmatch(name, pattern) for pattern in patterns), name
    # The image copies app/ whole: nothing in .dockerignore may drop the page.
    ignored = (ROOT / ".dockerignore").read_text()
    assert "!app/" in ignored and not re.search(r"^[^#!].*(static|\.html|\.js|\.css)", ignored,
                                                re.MULTILINE)


def test_nothing_is_loaded_from_another_origin():
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), path.name
        # No framework, no build step: the module imports nothing.
        if path.suffix == ".js":
            assert not re.search(r"^\s*import\b", text, re.MULTILINE), path.name


def test_the_page_is_served_open_with_a_strict_policy(painted_server):
    """Open although the API is keyed (the user must reach the key field)."""
    page = httpx.get(painted_server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    for asset, media in (("static/app.js", "javascript"), ("static/style.css", "text/css")):
        assert f'"{asset}"' in page.text
        response = httpx.get(f"{painted_server.url}/{asset}")
        assert response.status_code == 200 and media in response.headers["content-type"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.text == (STATIC_DIR / asset.split("/")[1]).read_text()
    for missing in ("/static/nope.js", "/static/../routes.py", "/static/%2e%2e/routes.py"):
        response = httpx.get(painted_server.url + missing)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert httpx.get(painted_server.url + "/v1/model").status_code == 401
