"""A dataset in the shape real labelling-tool exports have (category id 0, gapped ids, an empty placeholder
category, mixed sizes and orientations, a grayscale image) goes through check, split, a fine-tune from the shipped
student and evaluation, and the evaluation speaks the dataset's own category ids."""

from __future__ import annotations

import pytest

from compresskit.data import load_split
from compresskit.data.check import check_dataset
from compresskit.data.example_export import write_example_export
from compresskit.data.split import SplitConfig, split_dataset
from compresskit.engine import TrainConfig
from compresskit.engine.recipes import evaluate_preset, train_preset
from compresskit.models import load_checkpoint


@pytest.mark.slow
def test_awkward_export_is_checked_split_fine_tuned_and_evaluated_in_its_own_ids(tmp_path):
    annotations = write_example_export(tmp_path / "export")
    report = check_dataset(annotations, tmp_path / "export" / "images", progress=False)
    assert report.ok and any("grayscale" in str(problem) or "mode" in str(problem) for problem in report.warnings)

    manifest = split_dataset(annotations, tmp_path / "export" / "images", tmp_path / "split",
                             SplitConfig(val_fraction=0.34, seed=0))
    assert manifest["splits"]["val"]["boxes_per_category"]["disc"] > 0
    assert manifest["splits"]["val"]["boxes_per_category"]["tile"] > 0
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
