"""The dashboard router on its own: the page, its assets, and what it refuses to serve."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from spruce.api import dashboard

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(dashboard.router)
    return TestClient(app)


def test_index_is_the_page_with_a_same_origin_policy(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/js/app.js">' in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp


def test_every_asset_the_page_references_is_served_locally(client: TestClient) -> None:
    page = client.get("/").text
    refs = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert refs, "the page references no assets"
    for ref in refs:
        assert ref.startswith("/static/"), f"{ref} is not served by the API"
        r = client.get(ref)
        assert r.status_code == 200, ref
        assert int(r.headers["content-length"]) > 0, ref


def test_module_scripts_have_a_javascript_type(client: TestClient) -> None:
    for path in ("/static/js/app.js", "/static/js/views/job.js", "/static/vendor/chartjs/chart.umd.min.js"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/javascript"), path
    assert client.get("/static/css/app.css").headers["content-type"].startswith("text/css")


def test_module_imports_resolve_to_existing_files() -> None:
    # A typo in an import path only shows up in a browser; check them all here.
    for js in dashboard.STATIC_DIR.joinpath("js").rglob("*.js"):
        for target in re.findall(r'^import .* from "(\.[^"]+)";', js.read_text(), flags=re.M):
            assert (js.parent / target).resolve().is_file(), f"{js.name} imports missing {target}"


def test_vendored_chart_library_keeps_its_licence() -> None:
    vendor = dashboard.STATIC_DIR / "vendor" / "chartjs"
    assert (
        "MIT" in (vendor / "LICENSE.md").read_text()
        or "Permission is hereby granted" in (vendor / "LICENSE.md").read_text()
    )
    assert (vendor / "chart.umd.min.js").read_text().startswith("/*!\n * Chart.js v4")


@pytest.mark.parametrize(
    "path",
    [
        "/static/../dashboard.py",
        "/static/%2e%2e/dashboard.py",
        "/static/..%2fdashboard.py",
        "/static/js",
        "/static/nope.js",
        "/static//etc/passwd",
    ],
)
def test_paths_outside_the_folder_or_missing_are_404(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404, path
    assert "router = APIRouter" not in r.text


def test_static_file_refuses_escapes() -> None:
    with pytest.raises(Exception) as info:
        dashboard.static_file("../dashboard.py")
    assert getattr(info.value, "status_code", None) == 404
    assert dashboard.static_file("index.html").name == "index.html"
