"""The job body's schema over HTTP: fields that moved under ``experimental`` are 422s that say
where they went, integers that reach numpy/torch are bounded at submission, and ``GET /v1/spec``
serves the engine's own declaration (the dashboard's defaults)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spruce.core.spec import CompressionSpec
from spruce.core.spec.schema import describe, leaves, moved
from tests.unit.service import Service, with_field

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]

BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": "2:4",
    "method": {"pruner": "wanda", "preset": "reference", "allocation": "uniform", "induction": False},
    "calibration": {"source": "pydoc", "samples": 32, "seq_len": 512, "seed": 0},
    "evaluation": {"sources": ["pydoc"]},
}


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield Service(tmp_path_factory.mktemp("spec-api"))


def _submit(svc: Service, body: dict[str, Any]) -> Any:
    return svc.client.post("/v1/jobs", json=body, headers=svc.h())


@pytest.mark.parametrize("old", sorted(moved(CompressionSpec)))
def test_every_moved_field_is_a_422_naming_it_and_its_new_place(svc: Service, old: str) -> None:
    nested = old.startswith("method.induction.")  # the old induction object: the switch names them
    body = with_field(BODY, "method.induction", {"enabled": True}) if nested else BODY
    r = _submit(svc, with_field(body, old, 1))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == ("method.induction" if nested else old)
    assert f"moved to {moved(CompressionSpec)[old]}" in err["message"] and "unstable" in err["message"]


def test_the_old_induction_object_is_a_422_pointing_at_experimental(svc: Service) -> None:
    r = _submit(svc, with_field(BODY, "method.induction", {"enabled": True, "epochs": 2}))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["param"] == "method.induction" and "moved to experimental.induction.epochs" in err["message"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("calibration.seed", 2**70),
        ("calibration.seed", -1),
        ("calibration.samples", 0),
        ("experimental.induction.epochs", 10**30),
        ("experimental.swap_rounds", 2**63),
        ("experimental.blocksize", 0),
        ("experimental.evaluation.batch_size", 2**40),
        ("experimental.induction.lr", 0.0),
        ("experimental.order", "sideways"),
        ("experimental.colour", 1),
    ],
)
def test_out_of_range_values_are_422_at_submission(svc: Service, path: str, value: Any) -> None:
    r = _submit(svc, with_field(BODY, path, value))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == path


def test_experimental_settings_are_accepted_and_stored_as_sent(svc: Service) -> None:
    body = with_field(BODY, "experimental", {"swap_rounds": 3, "induction": {"epochs": 2}, "fit_to": "model"})
    r = _submit(svc, body)
    assert r.status_code == 201, r.text
    spec = CompressionSpec.from_dict(r.json()["spec"])
    assert (spec.preset, spec.swaps, spec.induction.epochs, spec.fits_dense_model) == (
        "reference",
        3,
        2,
        True,
    )
    # combinations are the engine's: Wanda fitting the dense model needs swaps
    r = _submit(svc, with_field(body, "experimental.swap_rounds", 0))
    assert r.status_code == 422 and r.json()["error"]["param"] == "experimental.fit_to"


def test_spec_route_serves_the_declared_defaults_and_presets(svc: Service) -> None:
    r = svc.client.get("/v1/spec")  # no key: it describes the service
    assert r.status_code == 200
    doc = r.json()
    assert doc == describe(CompressionSpec)
    public = {e["param"]: e for e in doc["public"]}
    for leaf in leaves(CompressionSpec):
        if leaf.meta.public and leaf.path not in ("model", "sparsity"):
            want = list(leaf.default) if isinstance(leaf.default, tuple) else leaf.default
            assert public[leaf.param]["default"] == want, leaf.param
    assert public["method.pruner"]["choices"] == ["magnitude", "wanda", "sparsegpt"]
    assert public["calibration.seed"]["max"] == 2**32 - 1
    exp = {e["param"]: e for e in doc["experimental"]}
    assert exp["experimental.swap_rounds"]["presets"] == {"default": -1, "reference": 0}
    assert exp["experimental.order"]["presets"] == {"default": "auto", "reference": "natural"}
    assert set(doc["presets"]) == {"default", "reference"}


def test_openapi_shows_the_public_sections_and_experimental(svc: Service) -> None:
    schema = svc.client.get("/openapi.json").json()["components"]["schemas"]
    assert set(schema["Method"]["properties"]) == {"pruner", "preset", "allocation", "induction"}
    assert schema["Calibration"]["properties"]["seed"]["maximum"] == 2**32 - 1
    assert "swap_rounds" in schema["Experimental"]["properties"]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (.ci/run installs it)")
def test_the_dashboard_form_takes_its_defaults_from_the_schema() -> None:
    """submit.js's own reading of GET /v1/spec (``formDefaults``, ``formChoices``) gives every
    public option's declared default and choices: the form writes none of them itself."""
    module = ROOT / "api" / "static" / "js" / "views" / "submit.js"
    script = (
        f"import {{ formDefaults, formChoices }} from {json.dumps(module.as_uri())};"
        "let text = ''; process.stdin.on('data', (d) => (text += d));"
        "process.stdin.on('end', () => { const doc = JSON.parse(text);"
        " console.log(JSON.stringify([formDefaults(doc), formChoices(doc)])); });"
    )
    out = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        input=json.dumps(describe(CompressionSpec)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    defaults, choices = json.loads(out.stdout)
    for leaf in leaves(CompressionSpec):
        if leaf.meta.public and leaf.path not in ("model", "sparsity"):
            want = list(leaf.default) if isinstance(leaf.default, tuple) else leaf.default
            assert defaults[leaf.param] == want, leaf.param
            if leaf.meta.choices:
                assert choices[leaf.param] == list(leaf.meta.choices)
    assert defaults["calibration.samples"] == 32 and choices["method.preset"] == ["default", "reference"]
    source = module.read_text()
    assert 'numberInput("samples", "32"' not in source and '"/v1/spec"' in source
