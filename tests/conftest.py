"""Shared fixtures (the environment every test and notebook run sees is set in the top-level conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def coco_tiny() -> Path:
    """The real COCO fixture (16 train2017 images); never copied into the repository."""
    path = Path(os.environ.get("COMPRESSKIT_COCO_TINY", ""))
    if not (path / "annotations" / "instances_train2017.json").is_file():
        pytest.skip("the coco-tiny fixture is not available (set COMPRESSKIT_COCO_TINY)")
    return path


@pytest.fixture(scope="session")
def tiny_embedded(tmp_path_factory) -> Path:
    """A small embedded dataset (24 train, 8 val images) generated once per test session."""
    from compresskit.data.embedded import EmbeddedConfig, generate_embedded

    out = tmp_path_factory.mktemp("embedded")
    return generate_embedded(out, EmbeddedConfig(seed=3, train_images=24, val_images=8), workers=1, progress=False)
