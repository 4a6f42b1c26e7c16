"""The SDK's transport: transient answers are retried (with the same Idempotency-Key), others are
not; delete_sweep sends DELETE /v1/sweeps/{id}."""

from __future__ import annotations

import httpx
import pytest

import spruce
import spruce.client as sdk


def _client(monkeypatch: pytest.MonkeyPatch, answers: list[httpx.Response], seen: list[httpx.Request]):
    monkeypatch.setattr(sdk.time, "sleep", lambda s: None)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    client = spruce.Client("http://spruce.test", "spk_test", retries=3)
    client.http = httpx.Client(base_url="http://spruce.test", transport=httpx.MockTransport(handler))
    return client


JOB = {"id": "job_1", "status": "queued", "progress": 0.0, "spec": {}}


def test_503_and_429_are_retried_with_the_same_idempotency_key(monkeypatch):
    seen: list[httpx.Request] = []
    answers = [
        httpx.Response(
            503, headers={"Retry-After": "1"}, json={"error": {"code": "unavailable", "message": "x"}}
        ),
        httpx.Response(429, json={"error": {"code": "rate_limited", "message": "x"}}),
        httpx.Response(201, json=JOB),
    ]
    job = _client(monkeypatch, answers, seen).submit({"model": "m", "sparsity": 0.5})
    assert job.id == "job_1" and len(seen) == 3
    assert len({r.headers["Idempotency-Key"] for r in seen}) == 1


def test_a_client_error_is_raised_at_once_with_its_field(monkeypatch):
    seen: list[httpx.Request] = []
    answers = [
        httpx.Response(422, json={"error": {"code": "invalid_spec", "message": "bad", "param": "sparsity"}})
    ]
    with pytest.raises(spruce.ApiError) as err:
        _client(monkeypatch, answers, seen).submit({"model": "m", "sparsity": 2})
    assert (err.value.status, err.value.param, len(seen)) == (422, "sparsity", 1)


def test_retries_end_in_an_error(monkeypatch):
    seen: list[httpx.Request] = []
    answers = [httpx.Response(503, json={"error": {"code": "unavailable", "message": "down"}})] * 4
    with pytest.raises(spruce.ApiError, match="503 unavailable"):
        _client(monkeypatch, answers, seen).get("job_1")
    assert len(seen) == 4


def test_backoff_follows_retry_after_within_bounds():
    assert sdk._backoff(0, "2") == 2.0
    assert sdk._backoff(5, None) == 16.0 and sdk._backoff(10, None) == 30.0
    assert sdk._backoff(0, "soon") == 0.5


def test_delete_sweep_sends_delete_and_raises_a_404(monkeypatch):
    seen: list[httpx.Request] = []
    answers = [
        httpx.Response(204),
        httpx.Response(404, json={"error": {"code": "sweep_not_found", "message": "no such sweep"}}),
    ]
    client = _client(monkeypatch, answers, seen)
    assert client.delete_sweep("sw_1") is None
    with pytest.raises(spruce.ApiError) as err:
        client.delete_sweep("sw_1")
    assert err.value.status == 404 and len(seen) == 2  # a 404 is not retried
    assert [(r.method, r.url.path) for r in seen] == [("DELETE", "/v1/sweeps/sw_1")] * 2
