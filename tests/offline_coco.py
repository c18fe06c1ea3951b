"""An offline stand-in for the coco profile's downloads: a COCO-2017-shaped source (``fake_coco``), small subset
recipes, and torchvision weight files with random values in the weights cache, so the coco code path (subset
build, ``weights=`` loading, every study) runs with no network. Accuracy means nothing with these weights; the
mechanics are what is tested."""

from __future__ import annotations

import json
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
