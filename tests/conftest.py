"""Shared fixtures (the environment every test and notebook run sees is set in the top-level conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fake_coco import make_fake_coco

COCO_TINY_ENV = "COMPRESSKIT_COCO_TINY"
_MEMBER = Path("annotations") / "instances_train2017.json"


def real_coco_tiny() -> Path | None:
    """The real COCO fixture (16 train2017 images, original annotations) when this machine has it, else None.

    ``COMPRESSKIT_COCO_TINY`` decides when set (a path without the fixture counts as absent); otherwise
    ``shared/coco-tiny`` beside the checkout is used when present. It is never copied into the repository.
    """
    env = os.environ.get(COCO_TINY_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "coco-tiny"
    return path if (path / _MEMBER).is_file() else None


@pytest.fixture(scope="session")
def coco_tiny(tmp_path_factory) -> Path:
    """A COCO-2017-shaped source in the official layout (``annotations/instances_train2017.json`` and
    ``train2017/*.jpg``): the real fixture when available, else a synthetic one built once per test run.

    Tests using it must hold for both sources: they derive expected values from the source's own JSON.
    """
    return real_coco_tiny() or make_fake_coco(tmp_path_factory.mktemp("fake-coco"))


@pytest.fixture(scope="module")
def student():
    """The shipped student detector (eval mode) and its label map, loaded once per test module."""
    from compresskit.models import load_preset

    detector, label_map, _ = load_preset("student")
    return detector, label_map


@pytest.fixture(scope="session")
def tiny_embedded(tmp_path_factory) -> Path:
    """A small embedded dataset (24 train, 8 val images) generated once per test session."""
    from compresskit.data.embedded import EmbeddedConfig, generate_embedded

    out = tmp_path_factory.mktemp("embedded")
    return generate_embedded(out, EmbeddedConfig(seed=3, train_images=24, val_images=8), workers=1, progress=False)


@pytest.fixture
def tiny_profile(monkeypatch, tiny_embedded):
    """Studies read the tiny embedded dataset instead of the full one (the loaders stay profile-aware)."""
    from compresskit import harness
    from compresskit.data import load_split

    def tiny_split(split, profile, label_map, train_transforms=None):
        return load_split(split, tiny_embedded, train_transforms=train_transforms, label_map=label_map)

    monkeypatch.setenv("COMPRESSKIT_PROFILE", "embedded")
    monkeypatch.setattr(harness.loading, "profile_split", tiny_split)
    return tiny_embedded
