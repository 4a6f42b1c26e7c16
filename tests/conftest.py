"""Shared fixtures: tiny model folders for every tiny architecture, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny import ARCHES, tiny_model_dir

# Two cores are shared by everyone on the test machines; more threads only contend.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arch name ("llama", "qwen2", "opt") -> a loadable Hugging Face folder of a tiny random model."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: tiny_model_dir(root, arch) for arch in ARCHES}
