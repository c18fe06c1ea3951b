"""``compresskit data split``: a single COCO export into the kit's train/val layout, deterministic, stratified,
groups kept together, sources untouched, nothing written for a dataset ``data check`` rejects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compresskit.cli import main
from compresskit.data import load_split
from compresskit.data.split import SplitConfig, assign_groups, split_dataset
from compresskit.errors import DatasetError


@pytest.fixture
def export(tiny_embedded, tmp_path) -> tuple[Path, Path]:
    """A labelling-tool-shaped export: one annotation file, one image folder (the tiny train split, 24 images)."""
    images = tmp_path / "export" / "images"
    shutil.copytree(tiny_embedded / "train", images)
    document = json.loads((tiny_embedded / "annotations" / "instances_train.json").read_text())
    for image in document["images"]:
        image["file_name"] = Path(image["file_name"]).name
    annotations = tmp_path / "export" / "annotations.json"
    annotations.write_text(json.dumps(document))
    return annotations, images


def _ids(folder: Path, split: str) -> set[str]:
    document = json.loads((folder / "annotations" / f"instances_{split}.json").read_text())
    return {image["file_name"] for image in document["images"]}


def test_split_is_deterministic_stratified_and_loads_with_the_kit(export, tmp_path):
    annotations, images = export
    manifest = split_dataset(annotations, images, tmp_path / "a", SplitConfig(val_fraction=0.25, seed=1))
    split_dataset(annotations, images, tmp_path / "b", SplitConfig(val_fraction=0.25, seed=1))
    split_dataset(annotations, images, tmp_path / "c", SplitConfig(val_fraction=0.25, seed=2))
    assert _ids(tmp_path / "a", "val") == _ids(tmp_path / "b", "val") != _ids(tmp_path / "c", "val")
    source = json.loads(annotations.read_text())
    train, val = (load_split(split, tmp_path / "a") for split in ("train", "val"))
    assert len(train) + len(val) == len(source["images"]) and abs(len(val) - 6) <= 2
    assert not _ids(tmp_path / "a", "train") & _ids(tmp_path / "a", "val")
    images_with = {}
    for annotation in source["annotations"]:
        images_with.setdefault(annotation["category_id"], set()).add(annotation["image_id"])
    names = {c["id"]: c["name"] for c in source["categories"]}
    for category, owners in images_with.items():  # every category in two or more images is in both splits
        if len(owners) >= 2:
            assert manifest["splits"]["val"]["boxes_per_category"][names[category]] > 0, names[category]
            assert manifest["splits"]["train"]["boxes_per_category"][names[category]] > 0, names[category]
    assert manifest["source"]["sha256"] and manifest["config"]["seed"] == 1
    assert sum(s["boxes"] for s in manifest["splits"].values()) == len(source["annotations"])
    assert all((images / Path(name).name).is_file() for name in _ids(tmp_path / "a", "train"))  # sources stay
    linked = tmp_path / "a" / sorted(_ids(tmp_path / "a", "train"))[0]
    assert linked.read_bytes() == (images / linked.name).read_bytes()


def test_group_by_keeps_each_group_on_one_side(export, tmp_path):
    annotations, images = export
    # Tiny file names are 000001.jpg ... 000024.jpg: the first five characters make groups of ten.
    manifest = split_dataset(annotations, images, tmp_path / "out",
                             SplitConfig(val_fraction=0.3, group_by=r"^(\d{5})", images="copy"))
    sides = {}
    for split in ("train", "val"):
        for name in _ids(tmp_path / "out", split):
            sides.setdefault(Path(name).name[:5], set()).add(split)
    assert all(len(found) == 1 for found in sides.values()) and len(sides) == 3
    assert manifest["images_placed"] == {"copy": 24}
    assert {g["images"] for g in manifest["groups"].values()} == {9, 10, 5}


def test_a_category_in_one_group_only_stays_in_train_and_is_reported():
    groups = {"a": [1], "b": [2], "c": [3], "d": [4]}
    categories_of = {1: {1, 2}, 2: {1}, 3: {1}, 4: {1}}
    val, unplaced = assign_groups(groups, categories_of, 0.25, seed=0)
    assert unplaced == [2] and "a" not in val and len(val) == 1


def test_a_dataset_check_rejects_is_not_split(export, tmp_path):
    annotations, images = export
    (images / "000003.jpg").unlink()
    with pytest.raises(DatasetError, match="000003.jpg"):
        split_dataset(annotations, images, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_split_refuses_a_folder_with_files(export, tmp_path):  # SplitConfig's checks: tests/test_configs.py
    annotations, images = export
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        split_dataset(annotations, images, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_data_split_command(export, tmp_path, capsys):
    annotations, images = export
    code = main(["data", "split", str(annotations), "--images", str(images), "--out", str(tmp_path / "out"),
                 "--val-fraction", "0.25", "--seed", "3"])
    assert code == 0 and "train with --data" in capsys.readouterr().out
    assert (tmp_path / "out" / "manifest.json").is_file()
    code = main(["data", "split", str(annotations), "--images", str(images), "--out", str(tmp_path / "x"),
                 "--val-fraction", "1.5"])
    assert code == 2 and "between 0 and 1" in capsys.readouterr().err
