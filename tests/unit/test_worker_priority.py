"""A worker lowers its own CPU priority when it starts (settings.worker_nice), before it imports the
engine: on a machine it shares with the API (`spruce serve`), status polls stay fast while a job
runs (benchmarks/poll_latency.py, RESULTS.md section 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CODE = (
    "import os\n"
    "from spruce.worker.app import _lower_priority, celery_app\n"
    "before = os.nice(0)\n"
    "handlers = [r[1]() for r in __import__('celery.signals').signals.worker_init.receivers]\n"
    "first = handlers[0].__name__ if handlers else None\n"
    "_lower_priority()\n"
    "print(os.nice(0) - before, first)\n"
)


@pytest.mark.parametrize(("setting", "expected"), [("7", 7), ("0", 0)])
def test_the_worker_lowers_its_priority_first(tmp_path: Path, setting: str, expected: int) -> None:
    env = {**os.environ, "SPRUCE_WORKER_NICE": setting, "SPRUCE_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", CODE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    raised, first = done.stdout.split()
    assert int(raised) == expected
    assert first == "_lower_priority"  # the engine's import (the next handler) already runs niced


def test_the_setting_is_bounded() -> None:
    from pydantic import ValidationError

    from spruce.common.settings import Settings

    with pytest.raises(ValidationError, match="worker_nice"):
        Settings(worker_nice=20)
