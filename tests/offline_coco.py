"""An offline stand-in for the coco profile's downloads: a COCO-2017-shaped source (``fake_coco``), small subset
recipes, and torchvision weight files with random values in the weights cache, so the coco code path (subset
build, ``weights=`` loading, every study) runs with no network. Accuracy means nothing with these weights; the
mechanics are what is tested."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torchvision.models import get_model_weights

from fake_coco import make_fake_coco

from compresskit.models import COCO_PRESETS, build_coco_architecture


def write_cached_weights(weights_dir: Path, presets: tuple[str, ...] = ("teacher", "student")) -> list[Path]:
    """Save random-valued state dicts where ``load_coco_pretrained`` looks for each preset's official file."""
    written = []
    for preset in presets:
        weights = get_model_weights(COCO_PRESETS[preset]).DEFAULT
        path = weights_dir / "checkpoints" / Path(weights.url).name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(build_coco_architecture(preset, num_classes=len(weights.meta["categories"])).state_dict(), path)
        written.append(path)
    return written


def write_recipes(folder: Path, train_images: int, val_images: int) -> Path:
    """``train2017.json`` and ``val2017.json`` recipes (the ``COMPRESSKIT_COCO_RECIPES`` format)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, images in (("train2017", train_images), ("val2017", val_images)):
        recipe = {"split": split, "images": images, "categories": None, "seed": 0, "annotations_sha256": None}
        (folder / f"{split}.json").write_text(json.dumps(recipe))
    return folder


def offline_coco_environment(root: Path, images: int = 48) -> dict[str, str]:
    """Build everything under ``root`` and return the environment variables that point the coco profile at it."""
    source = make_fake_coco(root / "coco-source", images=images)
    write_cached_weights(root / "weights")
    recipes = write_recipes(root / "recipes", train_images=images // 2, val_images=images // 4)
    return {"COMPRESSKIT_PROFILE": "coco", "COMPRESSKIT_COCO_ROOT": str(source),
            "COMPRESSKIT_COCO_RECIPES": str(recipes), "COMPRESSKIT_WEIGHTS": str(root / "weights"),
            "COMPRESSKIT_DATA": str(root / "data"), "COMPRESSKIT_COCO_IMAGE_SIZE": "320",
            "COMPRESSKIT_LATENCY_RUNS": "3"}


def real_coco_sample() -> Path | None:
    """The real COCO sample named by ``COMPRESSKIT_COCO_TINY`` (train2017 images with their original annotations),
    or None when it is not set or holds no annotation file. Never copied into the repository."""
    env = os.environ.get("COMPRESSKIT_COCO_TINY")
    sample = Path(env) if env else None
    return sample if sample is not None and (sample / "annotations" / "instances_train2017.json").is_file() else None


def real_coco_environment(root: Path, sample: Path) -> dict[str, str]:
    """The coco profile on the real sample: its images and annotations serve as both train2017 and val2017 (with
    random weights nothing is learned, so nothing leaks: these runs check the code on real photos and real
    annotations, with COCO's 80 categories and crowd regions, not accuracy)."""
    document = json.loads((sample / "annotations" / "instances_train2017.json").read_text())
    source = root / "coco-source"
    (source / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (source / split).mkdir()
        for image in document["images"]:
            shutil.copyfile(sample / "train2017" / image["file_name"], source / split / image["file_name"])
        (source / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    write_cached_weights(root / "weights")
    images = len(document["images"])
    recipes = write_recipes(root / "recipes", train_images=images, val_images=images)
    return {"COMPRESSKIT_PROFILE": "coco", "COMPRESSKIT_COCO_ROOT": str(source),
            "COMPRESSKIT_COCO_RECIPES": str(recipes), "COMPRESSKIT_WEIGHTS": str(root / "weights"),
            "COMPRESSKIT_DATA": str(root / "data"), "COMPRESSKIT_COCO_IMAGE_SIZE": "128",
            "COMPRESSKIT_LATENCY_RUNS": "3"}
