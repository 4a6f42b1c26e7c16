"""The sweeps page in a real browser against the real service: a sweep of three targets on the
tiny model, its list entry, its table, its curve with the Pareto front, the perplexity budget."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, JOB_TIMEOUT_S, Service, sign_in, wait_for_value
from tests.e2e.test_dashboard import chart_data

pytestmark = pytest.mark.e2e


def finished_sweep(service: Service, body: dict[str, Any]) -> dict[str, Any]:
    status, sweep = service.request("POST", "/v1/sweeps", service.key_a, body)
    assert status == 201, sweep
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while sweep["progress"]["done"] < sweep["progress"]["total"]:
        assert time.monotonic() < deadline, f"sweep {sweep['id']} still {sweep['status']}; see {service.log}"
        time.sleep(0.5)
        status, sweep = service.request("GET", f"/v1/sweeps/{sweep['id']}", service.key_a)
        assert status == 200, sweep
    return sweep


def drawn(page: Any, canvas_id: str) -> list[list[Any]]:
    """The chart's datasets once it is drawn."""
    data: list[list[Any]] = wait_for_value(page, lambda: chart_data(page, canvas_id), f"a chart on #{canvas_id}")
    return data


def test_a_sweeps_table_and_curve(page: Any, service: Service) -> None:
    sweep = finished_sweep(service, {"spec": service.tiny_spec(), "targets": [0.3, "2:4", 0.7]})
    assert sweep["status"] == "succeeded", sweep

    sign_in(page, service, service.key_a)
    page.get_by_role("link", name="Sweeps").click()
    page.locator(f'[data-testid=sweeps-table] tr[data-sweep-id="{sweep["id"]}"]').wait_for()
    assert "3 / 3" in page.locator(f'tr[data-sweep-id="{sweep["id"]}"]').inner_text()
    page.locator(f'tr[data-sweep-id="{sweep["id"]}"] a').click()
    page.wait_for_url(f"**/#/sweeps/{sweep['id']}")

    rows = page.locator("[data-testid=sweep-table] tbody tr")
    rows.first.wait_for()
    assert rows.count() == 3
    assert page.locator(".view-head .badge").inner_text() == "succeeded"
    for row in sweep["table"]:
        text = page.locator(f'[data-testid=sweep-table] tr[data-job-id="{row["job"]}"]').inner_text()
        assert f"{row['perplexity']['sparse']['pydoc']:.2f}" in text
        on_front = page.locator(f'tr[data-job-id="{row["job"]}"]').get_attribute("data-pareto")
        assert on_front == ("true" if row in sweep["pareto"] else "false")

    jobs, front, dense = drawn(page, "chart-sweep")
    assert sorted(p["y"] for p in jobs) == pytest.approx(
        sorted(r["perplexity"]["sparse"]["pydoc"] for r in sweep["table"])
    )
    assert [p["x"] for p in front] == pytest.approx([r["sparsity"] for r in sweep["pareto"]])
    assert [p["y"] for p in front] == pytest.approx([r["perplexity"]["sparse"]["pydoc"] for r in sweep["pareto"]])
    assert dense == [{"x": 0, "y": pytest.approx(sweep["table"][0]["perplexity"]["dense"]["pydoc"])}]

    # a budget wide enough for every row names the one the API names
    _, wide = service.request("GET", f"/v1/sweeps/{sweep['id']}?within=100", service.key_a)
    page.locator("#sweep-within").fill("10000")
    page.locator("#sweep-within").dispatch_event("change")
    best = page.locator("[data-testid=best-within]")
    best.filter(has_text="within 10000% of dense").wait_for()
    assert f"job {wide['best_within']['job'][:12]}" in best.inner_text()  # the id as shortId shows it
    assert "within=100" in page.url
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-sweep.png"), full_page=True)

    # another team sees no sweep of this one
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, service, service.key_b)
    page.goto(f"{service.url}/#/sweeps")
    page.locator("#sweeps-title").wait_for()
    page.get_by_text("No sweeps yet.").wait_for()
