"""A job's peak memory is its own, not the worker process's earlier jobs' (core.report)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# In a fresh process: the test process's own heap (earlier tests) would blur the figures.
SCRIPT = """
import json
from spruce.core.report import peak_rss_bytes, reset_peak_rss
MB = 2**20
block = bytearray(400 * MB)
block[::4096] = b"x" * len(block[::4096])  # touched: resident
high = peak_rss_bytes()
del block
reset_peak_rss()
after = peak_rss_bytes()
later = bytearray(64 * MB)
later[::4096] = b"y" * len(later[::4096])
print(json.dumps({"high": high, "after": after, "later": peak_rss_bytes()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak resets through /proc (Linux)")
def test_the_peak_starts_afresh_after_a_reset() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    mb = 2**20
    assert peaks["high"] - peaks["after"] > 300 * mb  # the freed block no longer counts
    assert peaks["later"] >= peaks["after"] + 48 * mb  # and what comes after does
