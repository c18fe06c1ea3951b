"""Shared fixtures. Notebooks executed by nbval inherit this process's environment, so the reports folder is
pointed at a temporary directory here: a test run never writes results into the working tree."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_RUN_DIR = Path(tempfile.mkdtemp(prefix="compresskit-tests-"))


def pytest_configure(config):
    os.environ.setdefault("COMPRESSKIT_REPORTS", str(_RUN_DIR / "reports"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are for people; logs stay readable
    fixture = _coco_tiny_path()
    if fixture is not None:  # the lessons read a local COCO install from here
        os.environ.setdefault("COMPRESSKIT_COCO_ROOT", str(fixture))


def _coco_tiny_path() -> Path | None:
    env = os.environ.get("COMPRESSKIT_COCO_TINY")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "coco-tiny"
    return path if (path / "annotations" / "instances_train2017.json").exists() else None


@pytest.fixture(scope="session")
def coco_tiny() -> Path:
    """The real COCO fixture (16 train2017 images); never copied into the repository."""
    path = _coco_tiny_path()
    if path is None:
        pytest.skip("the coco-tiny fixture is not available (set COMPRESSKIT_COCO_TINY)")
    return path


@pytest.fixture(scope="session")
def tiny_embedded(tmp_path_factory) -> Path:
    """A small embedded dataset (24 train, 8 val images) generated once per test session."""
    from compresskit.data.embedded import EmbeddedConfig, generate_embedded

    out = tmp_path_factory.mktemp("embedded")
    return generate_embedded(out, EmbeddedConfig(seed=3, train_images=24, val_images=8), workers=1, progress=False)
