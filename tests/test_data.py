"""The dataset class, the label map and the embedded generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from compresskit.data import CATEGORIES, CocoDetection, LabelMap, collate_fn, load_split
from compresskit.data.embedded import EmbeddedConfig, generate_embedded
from compresskit.errors import DatasetError
from fake_coco import make_fake_coco


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
    # contiguous labels: one per category of the file, plus background
    assert dataset.label_map.num_classes == len(dataset.coco.dataset["categories"]) + 1


def test_fake_coco_is_deterministic_and_shaped_like_coco(tmp_path):
    from pycocotools import mask as mask_utils

    first = make_fake_coco(tmp_path / "a", images=6, seed=4)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 2 + 6 + 2  # two annotation files, 6 train and 2 val images
    second = make_fake_coco(tmp_path / "b", images=6, seed=4)
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    other = make_fake_coco(tmp_path / "c", images=6, seed=5)
    assert (other / files[0]).read_bytes() != (first / files[0]).read_bytes()
    for split in ("train2017", "val2017"):
        document = json.loads((first / f"annotations/instances_{split}.json").read_text())
        assert set(document) == {"info", "licenses", "images", "annotations", "categories"}
        ids = [c["id"] for c in document["categories"]]
        assert ids != list(range(1, len(ids) + 1)) and max(ids) == 90  # COCO's gapped ids
        assert all(c["supercategory"] for c in document["categories"])
        for image in document["images"]:
            assert image["coco_url"] == f"http://images.cocodataset.org/{split}/{image['file_name']}"
            with Image.open(first / split / image["file_name"]) as picture:
                assert picture.size == (image["width"], image["height"]) and picture.format == "JPEG"
        orientations = {(i["width"] > i["height"]) - (i["width"] < i["height"]) for i in document["images"]}
        assert len(orientations) >= 2, "landscape and portrait sizes"
        crowd = [a for a in document["annotations"] if a["iscrowd"]]
        assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"], dict)
        height, width = crowd[0]["segmentation"]["size"]
        rle = mask_utils.frPyObjects(crowd[0]["segmentation"], height, width)
        assert int(mask_utils.area(rle)) == crowd[0]["area"]
        assert mask_utils.toBbox(rle).tolist() == crowd[0]["bbox"]
        for ann in (a for a in document["annotations"] if not a["iscrowd"]):
            image = next(i for i in document["images"] if i["id"] == ann["image_id"])
            polygon = mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
            rasterised = float(mask_utils.area(mask_utils.merge(polygon)))
            assert abs(rasterised - ann["area"]) <= 0.15 * ann["area"] + 20  # the polygon's own area
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x + w <= image["width"] and y + h <= image["height"]


def _write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("problem, message", [
    ("unknown_category", "unknown category_id 99"),
    ("degenerate", "degenerate box"),
    ("truncated", "instances.json is incomplete JSON: it stops at line 1, column 13; the file ends early"),
    ("corrupt", "instances.json is not valid JSON at line 1, column 13: expecting value; repair"),
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
    if problem == "truncated":
        path.write_text('{"images": [')
    elif problem == "corrupt":
        path.write_text('{"images": [,]}')
    with pytest.raises(DatasetError, match=message):
        CocoDetection(tmp_path, path)


def test_missing_image_names_the_file(tmp_path):
    path = _write(tmp_path, {"images": [{"id": 7, "file_name": "gone.jpg", "width": 10, "height": 10}],
                             "annotations": [], "categories": [{"id": 1, "name": "x"}]})
    with pytest.raises(DatasetError, match="gone.jpg is missing"):
        CocoDetection(tmp_path, path)[0]
