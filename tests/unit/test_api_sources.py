"""Text sources at submission: hub datasets accepted, local paths and fortunes-as-calibration refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.service import Service, with_field

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": 0.5,
    "method": {"pruner": "magnitude"},
    "calibration": {"source": "pydoc", "samples": 8, "seq_len": 64, "seed": 0},
}


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[Service]:
    service = Service(tmp_path)
    service.client.headers["Authorization"] = f"Bearer {service.key}"
    yield service


@pytest.mark.parametrize(
    ("source", "status"),
    [
        ("HuggingFaceH4/ultrachat_200k?split=train_sft", 201),
        ("allenai/c4?config=en&split=validation&field=text", 201),
        ("/srv/data/private.parquet", 422),
        ("owner/name?split=x&../=y", 422),
        ("fortunes", 422),
    ],
)
def test_calibration_sources(svc: Service, source: str, status: int) -> None:
    r = svc.client.post("/v1/jobs", json=with_field(BODY, "calibration.source", source))
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["error"]["param"] == "calibration.source"


def test_fortunes_evaluates(svc: Service) -> None:
    r = svc.client.post("/v1/jobs", json={**BODY, "evaluation": {"sources": ["pydoc", "fortunes"]}})
    assert r.status_code == 201, r.text
