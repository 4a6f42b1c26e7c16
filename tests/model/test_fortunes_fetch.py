"""Text C fetched for real: Debian's fortunes package, unpacked and joined (BENCHMARK.md)."""

from __future__ import annotations

import shutil

import pytest

from spruce.core.fortunes import fortunes_text

pytestmark = pytest.mark.model


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian's apt-get")
def test_the_fortunes_package_gives_about_two_megabytes_of_prose(tmp_path):
    text = fortunes_text(tmp_path)
    assert 2_000_000 < len(text) < 3_000_000
    assert "\n%\n" not in text  # the separators are gone
    assert (tmp_path / "texts" / "fortunes.txt").read_text(encoding="utf-8") == text
