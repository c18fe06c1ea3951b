"""A dataset in the shape real labelling-tool exports have (category id 0, gapped ids, an empty placeholder
category, mixed sizes and orientations, a grayscale image) goes through check, split, a fine-tune from the shipped
student and evaluation, and the evaluation speaks the dataset's own category ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from compresskit.data import load_split
from compresskit.data.check import check_dataset
from compresskit.data.split import SplitConfig, split_dataset
from compresskit.engine import TrainConfig
from compresskit.engine.recipes import evaluate_preset, train_preset
from compresskit.models import load_checkpoint

CATEGORIES = [{"id": 0, "name": "bolt"}, {"id": 3, "name": "nut"}, {"id": 7, "name": "washer (no boxes yet)"}]
SIZES = [(480, 320), (320, 480), (400, 400), (640, 360)]


def write_awkward_export(folder: Path, images: int = 12, seed: int = 0) -> Path:
    """``folder/annotations.json`` and ``folder/images/``: two categories with boxes, one empty, ids 0, 3, 7."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    document = {"images": [], "annotations": [], "categories": CATEGORIES}
    for index in range(images):
        width, height = SIZES[index % len(SIZES)]
        pixels = rng.integers(90, 140, size=(height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for box_index in range(2):
            category = CATEGORIES[(index + box_index) % 2]
            w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            colour = (230, 40, 40) if category["id"] == 0 else (40, 40, 230)
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
            document["annotations"].append({"id": len(document["annotations"]) + 1, "image_id": index + 1,
                                            "category_id": category["id"], "bbox": [x, y, w, h], "area": w * h,
                                            "iscrowd": 0})
        if index == 5:
            image = image.convert("L")  # exports mix in the odd grayscale frame
        name = f"shot_{index:03d}.jpg"
        image.save(folder / "images" / name, quality=95)
        document["images"].append({"id": index + 1, "file_name": name, "width": width, "height": height})
    (folder / "annotations.json").write_text(json.dumps(document))
    return folder / "annotations.json"


@pytest.mark.slow
def test_awkward_export_is_checked_split_fine_tuned_and_evaluated_in_its_own_ids(tmp_path):
    annotations = write_awkward_export(tmp_path / "export")
    report = check_dataset(annotations, tmp_path / "export" / "images", progress=False)
    assert report.ok and any("grayscale" in str(problem) or "mode" in str(problem) for problem in report.warnings)

    manifest = split_dataset(annotations, tmp_path / "export" / "images", tmp_path / "split",
                             SplitConfig(val_fraction=0.34, seed=0))
    assert manifest["splits"]["val"]["boxes_per_category"]["bolt"] > 0
    assert manifest["splits"]["val"]["boxes_per_category"]["nut"] > 0
    train = load_split("train", tmp_path / "split")
    assert train.label_map.category_ids == (0, 3, 7) and train.label_map.num_classes == 4

    config = TrainConfig(epochs=1, batch_size=4, warmup_iters=1, workers=0)
    checkpoint = train_preset("student", tmp_path / "out", data_dir=tmp_path / "split", config=config,
                              max_iters_per_epoch=2, progress=False, init="shipped")
    detector, label_map, meta = load_checkpoint(checkpoint)
    assert label_map.category_ids == (0, 3, 7) and detector.head.classification_head.num_classes == 4
    assert "head.classification_head.cls_logits.weight" in meta["reinitialised"]
    result = evaluate_preset("student", data_dir=tmp_path / "split", checkpoint=checkpoint, progress=False)
    assert 0.0 <= result["map"] <= 1.0
