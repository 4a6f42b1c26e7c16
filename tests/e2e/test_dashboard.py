"""The dashboard in a real browser against the real service (API + Celery worker + tiny models)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, JOB_TIMEOUT_S, Service, sign_in, wait_until

pytestmark = pytest.mark.e2e


def job_id_from_url(page: Any) -> str:
    page.wait_for_url("**/#/jobs/job_*")
    return page.url.rsplit("/", 1)[-1]


def chart_data(page: Any, canvas_id: str) -> list[list[Any]]:
    """The data arrays of every dataset of the Chart.js chart drawn on ``canvas_id``."""
    return page.evaluate(
        """id => {
            const chart = Chart.getChart(document.getElementById(id));
            return chart ? chart.data.datasets.map(d => d.data) : null;
        }""",
        canvas_id,
    )


def watch_job(page: Any) -> tuple[list[int], list[str], str]:
    """Poll the job page's progress bar and stage text until the job ends.

    Returns the progress values seen (in order), the stage captions seen, and the final status.
    """
    values: list[int] = []
    stages: list[str] = []
    bar = page.locator("section[aria-labelledby=progress-title] [role=progressbar]")
    badge = page.locator(".status-slot .badge")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = badge.inner_text() if badge.count() else ""
        if bar.count():
            value = int(bar.get_attribute("aria-valuenow") or 0)
            if not values or values[-1] != value:
                values.append(value)
            stage = page.locator("[data-testid=stage]").inner_text()
            if not stages or stages[-1] != stage:
                stages.append(stage)
        if status in ("succeeded", "failed", "cancelled"):
            return values, stages, status
        time.sleep(0.1)
    raise AssertionError(f"the job page did not show an end state in {JOB_TIMEOUT_S}s")


# --- sign-in -------------------------------------------------------------------------------


def test_sign_in_rejects_a_bad_key_then_keeps_a_good_one_for_the_tab(page: Any, service: Service) -> None:
    page.goto(service.url + "/")
    page.get_by_label("API key").fill("spk_not-a-real-key-at-all-000000000")
    page.get_by_role("button", name="Sign in").click()
    error = page.locator("#api-key-error")
    error.filter(has_text="not accepted").wait_for()
    assert page.get_by_label("API key").get_attribute("aria-invalid") == "true"
    assert page.evaluate("sessionStorage.getItem('spruce.apiKey')") is None

    page.get_by_label("API key").fill(service.key_a)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#jobs-title").wait_for()
    assert page.locator("#who").inner_text() == "team-a · alice"

    page.reload()  # the key survives a reload of the tab
    page.locator("#jobs-title").wait_for()

    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API key").wait_for()
    assert page.evaluate("sessionStorage.getItem('spruce.apiKey')") is None


# --- the form ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "value", "param"),
    [
        ("Samples", "0", "calibration.samples"),
        ("Sparsity", "1.5", "sparsity"),
        ("Seed", "-1", "calibration.seed"),
        ("Model", "/etc", "model"),
    ],
)
def test_a_bad_value_shows_the_apis_message_next_to_its_field(
    page: Any, service: Service, label: str, value: str, param: str
) -> None:
    # What the API itself says about the same body: the form must show exactly this, there.
    body = service.tiny_spec()
    section, _, leaf = param.rpartition(".")
    target = body[section] if section else body
    if param == "model":
        target[leaf] = value
    elif param == "sparsity":
        target[leaf] = float(value)
    else:
        target[leaf] = int(value)
    status, answer = service.request("POST", "/v1/jobs", service.key_a, body)
    assert status == 422 and answer["error"]["param"] == param, answer
    _, before = service.request("GET", "/v1/jobs?limit=100", service.key_a)

    sign_in(page, service, service.key_a)
    page.goto(service.url + "/#/new")
    page.get_by_label("Model", exact=True).fill(service.model)
    page.get_by_label("Samples").fill("4")
    page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Submit job").click()

    field_id = "f-" + param.replace(".", "-")
    message = page.locator(f"#{field_id}-error")
    message.filter(has_text=answer["error"]["message"].split(": ")[-1]).wait_for()
    assert page.locator(f"#{field_id}").get_attribute("aria-invalid") == "true"
    # The message belongs to that field: it is inside the field's own container.
    assert page.locator(f".field:has(#{field_id}) .field-error").inner_text() == message.inner_text()
    assert "#/new" in page.url  # no job page: nothing was created
    _, after = service.request("GET", "/v1/jobs?limit=100", service.key_a)
    assert [j["id"] for j in after["data"]] == [j["id"] for j in before["data"]]


# --- a whole job ---------------------------------------------------------------------------


def test_values_typed_before_the_schema_arrives_are_kept(page: Any, service: Service) -> None:
    # The form fills its defaults from GET /v1/spec; on a slow link the user types first.
    held: list[Any] = []
    page.route("**/v1/spec", lambda route: held.append(route))
    sign_in(page, service, service.key_a)
    page.goto(service.url + "/#/new")
    page.get_by_label("Seed", exact=True).fill("7")
    page.get_by_label("Samples").fill("4")
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "the form never asked for its schema"
    held[0].continue_()
    wait_until(page, "() => document.querySelector('#f-calibration-seed').placeholder !== ''")
    assert page.get_by_label("Seed", exact=True).input_value() == "7"
    assert page.get_by_label("Samples").input_value() == "4"
    # An untouched field still gets the schema's default.
    assert page.locator("#f-calibration-seq_len").input_value() != ""


def test_submit_through_the_form_watch_it_run_and_read_the_results(page: Any, service: Service) -> None:
    sign_in(page, service, service.key_a)
    page.get_by_role("link", name="New job").first.click()
    page.get_by_label("Model", exact=True).fill(service.four_layer_model)
    page.get_by_label("Sparsity", exact=True).fill("0.5")
    page.get_by_label("Pruner").select_option("wanda")
    assert page.get_by_label("Preset").input_value() == "default"  # the schema's default (GET /v1/spec)
    page.get_by_label("Sparsity Induction").check()
    page.get_by_label("Samples", exact=True).fill("4")
    page.get_by_label("Sequence length").fill("32")
    page.get_by_text("Experimental settings", exact=True).click()
    settings = {
        "induction": {"epochs": 3, "targets": "layer", "recover_epochs": 2, "recover_weights_lr": 0.01, "samples": 3},
        "evaluation": {"seq_len": 32, "max_windows": 2},
    }
    page.get_by_label("Experimental settings (JSON").fill(json.dumps(settings))
    page.get_by_role("button", name="Submit job").click()
    job_id = job_id_from_url(page)

    values, stages, status = watch_job(page)
    assert status == "succeeded", f"{stages} / {service.wait(job_id)}"
    assert values[-1] == 100
    assert values == sorted(values), f"progress went backwards: {values}"
    assert len(values) >= 2, f"the bar never moved: {values}"
    # The caption is sampled (a fast stage can pass between two looks), so the stages the job went
    # through are read from the page's event timeline, which records every stage change.
    assert len(stages) >= 2, f"the stage caption never changed: {stages}"
    page.locator(".timeline .event[data-type=succeeded]").wait_for()
    seen = page.locator(".timeline .event[data-type=stage] .event-stage").all_inner_texts()
    assert any("prune" in s.lower() for s in seen), seen
    assert any("evaluate" in s.lower() for s in seen), seen

    api_job = service.wait(job_id)
    results = api_job["results"]
    n_layers = len(results["layers"])
    assert n_layers == 4
    assert results["induction"]["targets"] == "layer"  # the form's choices reached the engine
    assert results["induction"]["recover_epochs"] == 2 and results["induction"]["recovery"]["targets"] == "layer"
    assert all(r["recovery"]["info"]["weights_lr"] == 0.01 for r in results["layers"])
    # 3 of the 4 calibration sequences: the recovery steps one sequence at a time, the first held
    # out for its check: 2 steps per epoch, 2 epochs
    assert results["induction"]["samples"] == 3
    assert all(len(r["recovery"]["losses"]) == 2 * 2 for r in results["layers"])

    # Perplexity: the page shows the API's numbers.
    ppl = page.locator("[data-testid=perplexity] tbody tr").first
    ppl.wait_for()
    cells = ppl.locator("td").all_inner_texts()
    assert float(cells[0]) == pytest.approx(results["perplexity"]["dense"]["pydoc"], abs=0.006)
    assert float(cells[1]) == pytest.approx(results["perplexity"]["sparse"]["pydoc"], abs=0.006)
    assert page.get_by_text("Achieved sparsity").is_visible()
    timings = page.locator("[data-testid=timings] li").all_inner_texts()
    assert any(t.startswith("prune") for t in timings) and any(t.startswith("total") for t in timings)

    # Charts: one bar per layer, values from the report.
    sparsity = chart_data(page, "chart-sparsity")
    assert sparsity and sparsity[0] == pytest.approx([r["sparsity"] for r in results["layers"]])
    error = chart_data(page, "chart-error")
    assert error and error[0] == pytest.approx([r["rel_error"] for r in results["layers"]])
    vs_model = any(r.get("error_vs") == "dense model" for r in results["layers"])
    heading = "Error against the dense model per layer" if vs_model else "Reconstruction error per layer"
    assert page.get_by_role("heading", name=heading).is_visible()
    assert all(v is not None and v > 0 for v in error[0])
    losses = chart_data(page, "chart-induction")
    assert losses and len(losses) == n_layers
    assert [len(d) for d in losses] == [len(r["induction"]["losses"]) for r in results["layers"]]
    assert all(len(d) >= 3 for d in losses)  # at least one loss per epoch
    recovery = chart_data(page, "chart-recovery")  # as pruned, recovered: the report's check losses
    assert recovery[0] == pytest.approx([r["recovery"]["identity_loss"] for r in results["layers"]])
    assert recovery[1] == pytest.approx([r["recovery"]["final_loss"] for r in results["layers"]])
    assert all(a >= b for a, b in zip(recovery[0], recovery[1], strict=True))

    # A download returns the real file (through a short-lived signed link the API hands out).
    code, listing = service.request("GET", f"/v1/jobs/{job_id}/artifacts", service.key_a)
    assert code == 200, listing
    report_row = next(a for a in listing["data"] if a["name"] == "report.json")
    with page.expect_download() as info:
        page.locator('button[data-artifact="report.json"]').click()
    saved = Path(info.value.path()).read_bytes()
    assert hashlib.sha256(saved).hexdigest() == report_row["sha256"]
    assert json.loads(saved)["perplexity"]["dense"]["pydoc"] == pytest.approx(
        results["perplexity"]["dense"]["pydoc"]
    )
    assert info.value.suggested_filename == f"{job_id}-report.json"

    page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar stays at the top of the image
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)

    # The list shows it, finished, with what was asked for.
    page.get_by_role("link", name="Jobs", exact=True).click()
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    row.wait_for()
    text = row.inner_text()
    assert "succeeded" in text and "wanda · SI" in text and "50%" in text and "alice" in text
    assert "tiny-llama-4x64-s0" in text


def test_calibration_file_upload_is_used_by_the_job(page: Any, service: Service, tmp_path: Path) -> None:
    from pydoc_data.topics import topics

    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(v for _, v in sorted(topics.items()))[:20_000])
    sign_in(page, service, service.key_a)
    page.goto(service.url + "/#/new")
    page.get_by_label("Model", exact=True).fill(service.model)
    page.get_by_label("or upload a file").set_input_files(str(text))
    page.get_by_text("Uploaded notes.txt").wait_for()
    source = page.get_by_label("Calibration text").input_value()
    assert source.startswith("ds_")
    page.get_by_label("Samples").fill("4")
    page.get_by_label("Sequence length").fill("32")
    page.get_by_text("Experimental settings", exact=True).click()
    page.get_by_label("Experimental settings (JSON").fill('{"evaluation": {"seq_len": 32, "max_windows": 2}}')
    page.get_by_role("button", name="Submit job").click()
    job_id = job_id_from_url(page)
    job = service.wait(job_id)
    assert job["spec"]["calibration"]["source"] == source
    assert job["status"] == "succeeded", job["error"]
    page.locator(".status-slot .badge-succeeded").wait_for()


def test_a_failed_job_shows_its_error(page: Any, service: Service) -> None:
    broken = Path(service.model).parent / "broken-model"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": 0}')
    job = service.submit(service.tiny_spec(model=str(broken)))
    sign_in(page, service, service.key_a)
    page.goto(f"{service.url}/#/jobs/{job['id']}")
    page.locator(".status-slot .badge-failed").wait_for(timeout=JOB_TIMEOUT_S * 1000)
    api_job = service.wait(job["id"])
    card = page.locator(".card-error")
    card.wait_for()
    assert "This job failed" in card.inner_text()
    assert api_job["error"]["message"] in card.inner_text()
    assert api_job["error"]["code"] in card.inner_text()
    assert page.locator("button[data-action=cancel]").count() == 0


# --- cancel --------------------------------------------------------------------------------


def test_cancel_a_queued_and_a_running_job(page: Any, service: Service) -> None:
    # Long enough that the cancel lands between two of its 24 layers even on a fast, quiet
    # machine (with 16 x 64 tokens a CI run finished the job before the click: 409).
    slow = service.tiny_spec(
        model=service.long_model,
        method={"pruner": "sparsegpt"},
        calibration={"source": "pydoc", "samples": 128, "seq_len": 128, "seed": 0},
    )
    running = service.submit(slow)
    queued = service.submit(slow)  # one worker: this one waits behind the first
    sign_in(page, service, service.key_a)

    page.goto(f"{service.url}/#/jobs/{queued['id']}")
    page.locator("button[data-action=cancel]").click()
    page.locator(".status-slot .badge-cancelled").wait_for()
    assert service.wait(queued["id"])["status"] == "cancelled"

    page.goto(f"{service.url}/#/jobs/{running['id']}")
    page.locator(".status-slot .badge-running").wait_for(timeout=JOB_TIMEOUT_S * 1000)
    page.locator("button[data-action=cancel]").click()
    page.locator(".status-slot .badge-cancelled").wait_for(timeout=JOB_TIMEOUT_S * 1000)
    job = service.wait(running["id"])
    assert job["status"] == "cancelled" and job["results"] is None
    assert page.locator(".timeline .event[data-type=cancelled]").count() >= 1
    assert page.locator("button[data-action=cancel]").count() == 0


# --- teams ---------------------------------------------------------------------------------


def test_the_list_updates_live_and_never_shows_another_teams_job(page: Any, service: Service) -> None:
    sign_in(page, service, service.key_a)
    # Submitted after the page loaded: the list must pick both changes up without a reload.
    theirs = service.submit(service.tiny_spec(), key=service.key_b)
    ours = service.submit(service.tiny_spec(sparsity="2:4"))
    row = page.locator(f'tr[data-job-id="{ours["id"]}"]')
    row.wait_for()
    row.locator(".badge-succeeded").wait_for(timeout=JOB_TIMEOUT_S * 1000)
    assert "2:4" in row.inner_text()
    service.wait(theirs["id"], key=service.key_b)
    page.wait_for_timeout(1500)  # a few more polls of the list
    assert theirs["id"] not in page.content()

    page.locator("label[for=filter-succeeded]").click()
    page.wait_for_url("**/#/jobs?status=succeeded")
    row.wait_for()
    # the list re-renders on every poll: read the rows once a render has them (CI once read an
    # empty tbody between two renders); a row of another status still fails the check below
    wait_until(page, "() => document.querySelectorAll('tbody tr[data-status]').length > 0")
    statuses = page.locator("tbody tr[data-status]").evaluate_all("rows => rows.map(r => r.dataset.status)")
    assert statuses and set(statuses) == {"succeeded"}
    assert theirs["id"] not in page.content()
    page.goto(f"{service.url}/#/jobs/{theirs['id']}")
    page.get_by_role("heading", name="Job not found").wait_for()

    # The other team does see it (the checks above are not vacuous).
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, service, service.key_b)
    page.locator(f'tr[data-job-id="{theirs["id"]}"]').wait_for()
    assert ours["id"] not in page.content()


# --- usage ---------------------------------------------------------------------------------


def test_the_list_shows_the_teams_usage_against_its_limits(page: Any, service: Service) -> None:
    # A team of its own, so no other test's jobs move its figures.
    key = service.cli("keys", "create", "--team", "team-c", "--name", "carol").strip().splitlines()[-1]
    service.cli("teams", "limits", "team-c", "--max-queued", "10", "--max-running", "2", "--max-bytes", str(50 * 1024**3))
    sign_in(page, service, key)
    panel = page.locator("[data-testid=usage]")
    panel.filter(has_text="queued 0/10").wait_for()
    assert panel.inner_text() == "Usage: queued 0/10 · running 0/2 · storage 0 B / 50.0 GiB"

    job = service.submit(service.tiny_spec(), key=key)
    assert service.wait(job["id"], key=key)["status"] == "succeeded"
    code, usage = service.request("GET", "/v1/usage", key)
    assert code == 200 and usage["stored_bytes"]["used"] > 0, usage
    # The panel follows the API without a reload; its wording is the helper's (tests/js/usage.test.mjs).
    expected = page.evaluate("async u => (await import('/static/js/usage.js')).usageText(u)", usage)
    assert expected.startswith("Usage: queued 0/10 · running 0/2 · storage ") and "0 B /" not in expected
    page.locator(f'tr[data-job-id="{job["id"]}"] .badge-succeeded').wait_for()
    wait_until(page, "t => document.querySelector('[data-testid=usage]').innerText === t", expected, 15)


# --- compare -------------------------------------------------------------------------------


def test_compare_finished_jobs(page: Any, service: Service) -> None:
    a = service.submit(service.tiny_spec(method={"pruner": "magnitude"}))
    b = service.submit(service.tiny_spec(sparsity="2:4"))
    a, b = service.wait(a["id"]), service.wait(b["id"])
    assert a["status"] == b["status"] == "succeeded"

    sign_in(page, service, service.key_a)
    page.locator(f'tr[data-job-id="{a["id"]}"] input[type=checkbox]').check()
    page.locator(f'tr[data-job-id="{b["id"]}"] input[type=checkbox]').check()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-jobs.png"), full_page=True)
    page.get_by_role("button", name="Compare selected (2)").click()
    table = page.locator("[data-testid=compare-table] tbody tr")
    table.first.wait_for()
    assert table.count() == 2
    row_a = page.locator(f'[data-testid=compare-table] tr[data-job-id="{a["id"]}"]').inner_text()
    assert f"{a['results']['perplexity']['sparse']['pydoc']:.2f}" in row_a
    data = chart_data(page, "chart-compare")
    points = [p for d in data for p in d]
    sparse = sorted(p["y"] for p in points if p["x"] > 0)
    expected = sorted(j["results"]["perplexity"]["sparse"]["pydoc"] for j in (a, b))
    assert sparse == pytest.approx(expected)
    assert any(p["x"] == 0 for p in points)  # the dense model

    page.screenshot(path=str(ARTIFACTS / "dashboard-compare.png"), full_page=True)
    page.locator(f"#pick-{a['id']}").uncheck()
    wait_until(page, "() => document.querySelectorAll('[data-testid=compare-table] tbody tr').length === 1")
    assert b["id"] in page.url and a["id"] not in page.url
