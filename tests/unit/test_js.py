"""The dashboard's pure JavaScript helpers (tests/js, Node's own test runner) as part of pytest.

The browser tests (tests/e2e) cover flows; formatting, table building and report shaping are
checked here, under Node, by importing the ES modules the page serves.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed (.ci/run installs it)")
def test_node_test_runner_passes_the_dashboard_helpers() -> None:
    assert NODE is not None
    tests = sorted((ROOT / "tests" / "js").glob("*.test.mjs"))
    assert tests, "no tests/js/*.test.mjs found"
    out = subprocess.run(
        [NODE, "--test", "--test-reporter=tap", *map(str, tests)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    # The runner's TAP summary: every file ran and none failed (a file that cannot import fails).
    assert "# fail 0" in out.stdout, out.stdout[-3000:]
    passed = int(out.stdout.rsplit("# pass ", 1)[1].split()[0])
    assert passed >= len(tests), out.stdout[-3000:]
