"""Text C of BENCHMARK.md: Debian's ``fortunes`` package, English prose out of the calibration domain.

An evaluation-only source: nothing is calibrated on it, so a method that fits the calibration
text (pydoc) too closely shows it here. The package is fetched once with ``apt-get download``
(Debian's archive is reachable where a dataset hub may not be), unpacked with ``dpkg -x``, and
the joined text cached as ``<cache>/texts/fortunes.txt``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from spruce.core.errors import DatasetUnavailable

log = logging.getLogger(__name__)

FORTUNES = "fortunes"
_FOLDER = "usr/share/games/fortunes"
_TIMEOUT_S = 300


def fortunes_text(cache_dir: Path) -> str:
    """The joined fortunes text, fetched and cached on first use (``cache_dir``: Spruce's cache)."""
    cached = cache_dir / "texts" / "fortunes.txt"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="spruce-fortunes-") as tmp:
        text = join_fortunes(_unpack(Path(tmp)) / _FOLDER)
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = cached.with_name(f".fortunes.{os.getpid()}.txt")
    staging.write_text(text, encoding="utf-8")
    staging.replace(cached)  # atomic: a reader never sees half a file
    log.info("cached the fortunes text (%d characters) in %s", len(text), cached)
    return text


def join_fortunes(folder: Path) -> str:
    """BENCHMARK.md's recipe: the files without ``.dat``/``.u8``, sorted by name, each with its
    ``%`` separator lines removed, joined with a blank line."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix not in (".dat", ".u8"))
    if not files:
        raise DatasetUnavailable(f"no fortune files under {folder}", param="evaluation.sources")
    texts = []
    for path in files:
        lines = path.read_text(encoding="utf-8").split("\n")
        texts.append("\n".join(line for line in lines if line.rstrip() != "%"))
    return "\n\n".join(texts)


def _unpack(tmp: Path) -> Path:
    """Download the ``fortunes`` .deb into ``tmp`` and unpack it; returns the unpacked root."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise DatasetUnavailable(
                f"the fortunes text needs Debian's {tool} to fetch the 'fortunes' package",
                param="evaluation.sources",
            )
    _run(["apt-get", "download", FORTUNES], cwd=tmp, hint="run `apt-get update` once, then retry")
    debs = sorted(tmp.glob("fortunes_*.deb"))
    if not debs:
        raise DatasetUnavailable("apt-get download fortunes left no .deb file", param="evaluation.sources")
    root = tmp / "root"
    _run(["dpkg", "-x", str(debs[0]), str(root)], cwd=tmp, hint="the .deb did not unpack")
    return root


def _run(cmd: list[str], *, cwd: Path, hint: str) -> None:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DatasetUnavailable(
            f"{' '.join(cmd)} did not finish in {_TIMEOUT_S} s", param="evaluation.sources"
        ) from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-400:]
        raise DatasetUnavailable(f"{' '.join(cmd)} failed ({hint}): {tail}", param="evaluation.sources")
