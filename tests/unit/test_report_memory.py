"""A job's peak memory is its own, not the worker process's earlier jobs' (core.report)."""

from __future__ import annotations

import sys

import pytest

from spruce.core.report import peak_rss_bytes, reset_peak_rss


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak resets through /proc (Linux)")
def test_the_peak_starts_afresh_after_a_reset() -> None:
    block = bytearray(400 * 2**20)  # touched: resident
    block[:: 4096] = b"x" * len(block[:: 4096])
    high = peak_rss_bytes()
    del block
    reset_peak_rss()
    after = peak_rss_bytes()
    assert high - after > 300 * 2**20
    later = bytearray(50 * 2**20)
    later[:: 4096] = b"y" * len(later[:: 4096])
    assert peak_rss_bytes() >= after + 40 * 2**20  # and it still counts what comes after
