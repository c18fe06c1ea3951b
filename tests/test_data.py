"""The dataset class, the label map and the embedded generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compresskit.data import CATEGORIES, CocoDetection, LabelMap, collate_fn, load_split
from compresskit.data.embedded import EmbeddedConfig, generate_embedded
from compresskit.errors import DatasetError


def test_label_map_survives_gapped_coco_ids():
    categories = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 13, "name": "stop sign"}]
    contiguous = LabelMap.contiguous(categories)
    assert contiguous.labels == (1, 2, 3) and contiguous.category_ids == (1, 13, 90)
    assert [contiguous.to_category_id(contiguous.to_label(c)) for c in (1, 13, 90)] == [1, 13, 90]
    assert contiguous.num_classes == 4
    identity = LabelMap.identity(categories)
    assert identity.to_label(90) == 90 and identity.num_classes == 91
    assert LabelMap.from_json(json.loads(json.dumps(contiguous.to_json()))) == contiguous


def test_embedded_generator_is_deterministic(tmp_path):
    config = EmbeddedConfig(seed=11, train_images=10, val_images=4)
    first = generate_embedded(tmp_path / "a", config, workers=2, progress=False)
    second = generate_embedded(tmp_path / "b", config, workers=1, progress=False)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 10 + 4 + 3
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    other = generate_embedded(tmp_path / "c", EmbeddedConfig(seed=12, train_images=10, val_images=4),
                              workers=1, progress=False)
    assert (other / "train/000001.jpg").read_bytes() != (first / "train/000001.jpg").read_bytes()


def test_embedded_generator_reuses_its_cache(tmp_path):
    config = EmbeddedConfig(seed=1, train_images=3, val_images=2)
    out = generate_embedded(tmp_path, config, workers=1, progress=False)
    stamp = (out / "annotations/instances_val.json").stat().st_mtime_ns
    generate_embedded(tmp_path, config, workers=1, progress=False)
    assert (out / "annotations/instances_val.json").stat().st_mtime_ns == stamp


def test_embedded_dataset_has_what_a_detector_must_learn(tiny_embedded):
    document = json.loads((tiny_embedded / "annotations/instances_train.json").read_text())
    ids = sorted(c["id"] for c in document["categories"])
    assert len(ids) >= 6 and ids != list(range(1, len(ids) + 1)), "category ids must be gapped"
    areas = [a["area"] for a in document["annotations"]]
    assert min(areas) < 32**2 and any(32**2 <= a < 96**2 for a in areas) and max(areas) >= 96**2
    assert {a["category_id"] for a in document["annotations"]} <= set(ids)
    for ann in document["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 320 and y + h <= 320
        assert ann["area"] <= w * h


def test_dataset_targets_follow_torchvision_conventions(tiny_embedded):
    dataset = load_split("val", tiny_embedded)
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 320, 320) and 0 <= image.min() <= image.max() <= 1
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
    assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
    assert set(target["labels"].tolist()) <= set(range(1, len(CATEGORIES) + 1))
    images, targets = collate_fn([dataset[0], dataset[1]])
    assert len(images) == len(targets) == 2
    first_ann = dataset.coco.imgToAnns[dataset.ids[0]][0]
    assert dataset.label_map.to_category_id(int(target["labels"][0])) == first_ann["category_id"]


def test_crowd_regions_are_not_training_targets(coco_tiny):
    dataset = CocoDetection(coco_tiny, coco_tiny / "annotations/instances_train2017.json")
    crowd = [a for a in dataset.coco.dataset["annotations"] if a["iscrowd"]]
    assert crowd, "the fixture has a crowd region"
    index = dataset.ids.index(crowd[0]["image_id"])
    image_id = dataset.ids[index]
    info = dataset.coco.imgs[image_id]
    target = dataset.load_target(image_id, info["width"], info["height"])
    non_crowd = [a for a in dataset.coco.imgToAnns[image_id] if not a["iscrowd"]]
    assert len(target["boxes"]) == len(non_crowd)
    assert dataset.label_map.num_classes == 81  # 80 COCO categories + background


def _write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("problem, message", [
    ("unknown_category", "unknown category_id 99"),
    ("degenerate", "degenerate box"),
    ("corrupt", "not valid JSON"),
    ("no_images", "no images"),
])
def test_bad_annotation_files_give_clear_errors(tmp_path, problem, message):
    document = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 16,
                                 "iscrowd": 0}],
                "categories": [{"id": 3, "name": "thing"}]}
    if problem == "unknown_category":
        document["annotations"][0]["category_id"] = 99
    elif problem == "degenerate":
        document["annotations"][0]["bbox"] = [1, 1, 0, 4]
    elif problem == "no_images":
        document["images"], document["annotations"] = [], []
    path = _write(tmp_path, document)
    if problem == "corrupt":
        path.write_text('{"images": [')
    with pytest.raises(DatasetError, match=message):
        CocoDetection(tmp_path, path)


def test_missing_image_names_the_file(tmp_path):
    path = _write(tmp_path, {"images": [{"id": 7, "file_name": "gone.jpg", "width": 10, "height": 10}],
                             "annotations": [], "categories": [{"id": 1, "name": "x"}]})
    with pytest.raises(DatasetError, match="gone.jpg is missing"):
        CocoDetection(tmp_path, path)[0]
