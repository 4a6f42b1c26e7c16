"""docker-compose.yml, the Dockerfile, .dockerignore and pyproject's dependency split, read as
data: the production stack runs the commands the integration tests run, restarts what dies,
pins its images, the API image installs no torch and the worker image can run lm-eval tasks."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import API_CMD, WORKER_CMD

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TORCH_SIDE = ("torch", "transformers", "accelerate", "datasets", "gguf", "compressed-tensors", "safetensors")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _stage(dockerfile: str, name: str) -> str:
    """The text of one build stage (``FROM ... AS name`` up to the next FROM)."""
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", dockerfile, re.S | re.M)
    assert match, name
    return match.group(1)


def test_compose_runs_what_the_integration_tests_run(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = services["api"]["command"]
    assert api[:2] == ["sh", "-c"] and api[2].startswith("spruce migrate && exec ")
    uvicorn = shlex.split(api[2].split("exec ", 1)[1])
    tested = API_CMD[1:]  # after "-m": uvicorn spruce.api.app:create_app --factory --host ...
    assert uvicorn[: len(tested) - 1] == tested[:-1] and uvicorn[-2:] == ["--port", "8000"]
    assert services["worker"]["command"] == WORKER_CMD[1:]  # celery -A spruce.worker.app worker ...
    dockerfile = (ROOT / "Dockerfile").read_text()
    for target, command in (("api", api), ("worker", services["worker"]["command"])):
        assert services[target]["build"]["target"] == target
        assert f"CMD {command}".replace("'", '"') in _stage(dockerfile, target)


def test_services_restart_and_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name == "create-bucket":  # a one-shot: restarted only when it failed
            assert service["restart"] == "on-failure"
        else:
            assert service["restart"] == "unless-stopped", name
        if "image" in service:
            image, _, tag = service["image"].partition(":")
            assert tag and tag != "latest", name
            if image.startswith("minio/"):
                assert re.fullmatch(r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", tag), service["image"]


def test_the_worker_has_its_cache_token_and_healthcheck(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    env = worker["environment"]
    assert env["HF_HOME"].startswith("/cache/") and env["SPRUCE_CACHE_DIR"] == "/cache"
    assert env["HF_TOKEN"] == "${HF_TOKEN:-}" and env["SPRUCE_LOG_FORMAT"] == "json"
    assert "modelcache:/cache" in worker["volumes"]
    assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "spruce.worker.healthcheck"]
    base = _stage((ROOT / "Dockerfile").read_text(), "base")
    # The named volume copies the image's /cache, owner included: it must exist, owned by uid 1000.
    assert "--uid 1000 spruce" in base and re.search(r"chown spruce:spruce [^\n]*/cache", base)


def test_the_api_image_and_the_base_install_carry_no_torch() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    api, worker = _stage(dockerfile, "api"), _stage(dockerfile, "worker")
    assert "torch" not in api and "RUN pip install .\n" in api
    # The eval extra too: a job naming evaluation tasks runs them with lm-eval in the worker.
    assert 'pip install ".[worker,eval]"' in worker and "torch==" in worker
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = [re.split(r"[<>=\[ ;]", d)[0] for d in project["dependencies"]]
    assert not set(base) & set(TORCH_SIDE), base
    extras = project["optional-dependencies"]
    assert {re.split(r"[<>=\[ ;]", d)[0] for d in extras["worker"]} >= {"torch", "transformers"}
    assert {re.split(r"[<>=\[ ;]", d)[0] for d in extras["eval"]} == {"lm-eval"}
    assert "spruce[worker]" in extras["dev"]  # make install / .ci/run still install everything
    assert "prometheus-client" in base


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".spruce", "out", "test-artifacts"} <= ignored


def test_the_api_and_the_cli_start_without_the_worker_extra(tmp_path: Path) -> None:
    """What the API image runs, in a process where the worker extra's packages cannot be imported."""
    import subprocess
    import sys

    blocked = ["torch", "transformers", "accelerate", "datasets", "gguf", "compressed_tensors", "safetensors"]
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"
        "from pathlib import Path\n"
        "import spruce.api.app, spruce.cli.main, spruce.migrations\n"
        "from spruce.common.settings import Settings\n"
        f"spruce.api.app.create_app(Settings(data_dir=Path({str(tmp_path)!r}))).openapi()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


GENERIC = {"core", "api", "common", "cli", "worker", "migrations"}


def test_the_wheel_installs_one_import_name(tmp_path: Path) -> None:
    """The built distribution holds ``spruce`` and nothing else at the top level: the engine and
    service folders go in as spruce.core, spruce.api, ... (no generic names in site-packages)."""
    import subprocess
    import sys
    import zipfile

    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path),
    ]
    done = subprocess.run([*build, str(ROOT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("spruce-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"spruce"}
    assert {
        "spruce/core/compress.py",
        "spruce/api/app.py",
        "spruce/migrations/versions/0005_job_queue.py",
    } <= set(names)
    assert "spruce/api/static/index.html" in names


def test_no_module_is_imported_under_a_generic_name() -> None:
    """Every entry point imports the code as spruce.*: a stray ``import core...`` would load a
    second copy of the module (its own settings, its own registries) beside spruce.core."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import spruce.api.app, spruce.worker.app, spruce.cli.main, spruce.core.compress, spruce\n"
        "spruce.cli.main.build_parser()\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(GENERIC)!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
