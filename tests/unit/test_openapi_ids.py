"""The OpenAPI document's operation ids: generated clients name their methods after them, so
each /v1 route's id is pinned here (a rename is a deliberate change of this table) and no two
operations share one."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from spruce.api.app import create_app
from spruce.common.settings import Settings

pytestmark = pytest.mark.unit

V1 = {
    ("POST", "/v1/jobs"): "create_job",
    ("GET", "/v1/jobs"): "list_jobs",
    ("GET", "/v1/jobs/{job_id}"): "read_job",
    ("DELETE", "/v1/jobs/{job_id}"): "delete_job",
    ("POST", "/v1/jobs/{job_id}/cancel"): "cancel_job",
    ("GET", "/v1/jobs/{job_id}/events"): "list_events",
    ("GET", "/v1/jobs/{job_id}/artifacts"): "list_artifacts",
    ("GET", "/v1/jobs/{job_id}/artifacts/{name}"): "download_artifact",
    ("GET", "/v1/downloads/{job_id}/{name}"): "signed_download",
    ("GET", "/v1/datasets"): "list_datasets",
    ("POST", "/v1/datasets"): "upload_dataset",
    ("GET", "/v1/datasets/{dataset_id}"): "read_dataset",
    ("DELETE", "/v1/datasets/{dataset_id}"): "delete_dataset",
    ("POST", "/v1/sweeps"): "create_sweep",
    ("GET", "/v1/sweeps"): "list_sweeps",
    ("GET", "/v1/sweeps/{sweep_id}"): "read_sweep",
    ("DELETE", "/v1/sweeps/{sweep_id}"): "delete_sweep",
    ("POST", "/v1/sweeps/{sweep_id}/cancel"): "cancel_sweep",
    ("GET", "/v1/spec"): "read_spec",
    ("GET", "/v1/usage"): "read_usage",
    ("GET", "/v1/me"): "read_me",
    ("GET", "/v1/models"): "list_models",
}


@pytest.fixture(scope="module")
def operations(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, Any]]:
    document = create_app(Settings(data_dir=tmp_path_factory.mktemp("openapi"))).openapi()
    return {
        (method.upper(), path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    }


def test_every_v1_operation_has_its_pinned_id(operations: dict[tuple[str, str], dict[str, Any]]) -> None:
    v1 = {key: op["operationId"] for key, op in operations.items() if key[1].startswith("/v1/")}
    assert v1 == V1


def test_operation_ids_are_unique_and_name_no_path(operations: dict[tuple[str, str], dict[str, Any]]) -> None:
    ids = [op["operationId"] for op in operations.values()]
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    # FastAPI's default ids end in the path and the method (create_job_v1_jobs_post).
    assert not [i for i in ids if "_v1_" in i or i.endswith(("_get", "_post", "_delete"))], ids
    assert operations[("GET", "/readyz")]["operationId"] == "readyz"
