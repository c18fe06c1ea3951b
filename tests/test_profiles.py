"""The coco profile's code path, offline: torchvision weights from a cache or one clear error; the COCO subset
read and evaluated by the same loader and evaluator as the embedded data."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models import get_model_weights

from compresskit.data import LabelMap, profile_split
from compresskit.data import coco_subset
from compresskit.engine import evaluate, make_loader
from compresskit.errors import DownloadError
from compresskit.models import COCO_PRESETS, build_coco_architecture, load_coco_pretrained
from compresskit.settings import profile


def test_profile_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("COMPRESSKIT_PROFILE", raising=False)
    assert profile() == "embedded"
    monkeypatch.setenv("COMPRESSKIT_PROFILE", "coco")
    assert profile() == "coco"
    monkeypatch.setenv("COMPRESSKIT_PROFILE", "imagenet")
    with pytest.raises(ValueError, match="embedded, coco"):
        profile()


def test_missing_weights_offline_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_WEIGHTS", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(DownloadError, match="not cached") as error:
        load_coco_pretrained("student")
    assert "COMPRESSKIT_WEIGHTS" in str(error.value)


def test_cached_weights_load_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_WEIGHTS", str(tmp_path))
    weights = get_model_weights(COCO_PRESETS["student"]).DEFAULT
    cached = tmp_path / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    reference = build_coco_architecture("student", num_classes=91)
    torch.save(reference.state_dict(), cached)
    model, label_map = load_coco_pretrained("student")
    assert label_map.num_classes == 91 and label_map.to_category_id(90) == 90 and len(label_map.labels) == 80
    first = next(iter(reference.state_dict()))
    assert torch.equal(model.state_dict()[first], reference.state_dict()[first])


def test_coco_profile_uses_the_same_loader_and_evaluator(coco_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_DATA", str(tmp_path))
    monkeypatch.setenv("COMPRESSKIT_COCO_ROOT", str(coco_tiny))
    small = coco_subset.SubsetRecipe(split="train2017", images=3, seed=0)
    monkeypatch.setattr(coco_subset, "DEFAULT_RECIPES", {"train2017": small, "val2017": small})
    dataset = profile_split("val", profile="coco")
    label_map = LabelMap.identity(dataset.coco.dataset["categories"])
    dataset = profile_split("val", profile="coco", label_map=label_map)
    assert len(dataset) == 3 and label_map.num_classes == 91
    detector = build_coco_architecture("student")
    metrics = evaluate(detector, make_loader(dataset, batch_size=3, train=False), label_map, progress=False)
    assert set(metrics) >= {"map", "map50", "map_small"} and 0.0 <= metrics["map"] <= 1.0
