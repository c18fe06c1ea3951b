"""Starting from a shipped detector on a dataset with other categories: every weight that fits is kept, the class
logits start afresh (even when the class count matches), and the checkpoint carries the dataset's label map."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from compresskit.engine import TrainConfig
from compresskit.engine.recipes import train_preset
from compresskit.errors import ConfigError
from compresskit.models import EMBEDDED_PRESETS, build_detector, load_checkpoint, load_preset, transfer_weights_


def test_transfer_keeps_what_fits_and_restarts_the_class_logits():
    shipped, _, _ = load_preset("student")
    fewer = build_detector(replace(EMBEDDED_PRESETS["student"], num_classes=4))
    fresh_logits = fewer.head.classification_head.cls_logits.weight.clone()
    report = transfer_weights_(fewer, shipped, same_categories=False)
    assert sorted(report["reinitialised"]) == ["head.classification_head.cls_logits.bias",
                                               "head.classification_head.cls_logits.weight"]
    assert torch.equal(fewer.head.classification_head.cls_logits.weight, fresh_logits)
    for name, value in fewer.state_dict().items():
        if name in report["kept"]:
            assert torch.equal(value, shipped.state_dict()[name]), name

    same = build_detector(EMBEDDED_PRESETS["student"])
    assert "head.classification_head.cls_logits.weight" in transfer_weights_(same, shipped, False)["reinitialised"]
    assert transfer_weights_(same, shipped, same_categories=True)["reinitialised"] == []


@pytest.mark.slow
def test_train_preset_from_the_shipped_student_on_other_categories(tiny_embedded, tmp_path):
    data = tmp_path / "renamed"
    shutil.copytree(tiny_embedded, data)
    for split in ("train", "val"):  # same count, other meaning: the class slots must not carry over
        path = data / "annotations" / f"instances_{split}.json"
        document = json.loads(path.read_text())
        for category in document["categories"]:
            category["name"] = f"part-{category['id']}"
        path.write_text(json.dumps(document))
    config = TrainConfig(epochs=1, batch_size=4, warmup_iters=1, workers=0)
    checkpoint = train_preset("student", tmp_path / "out", data_dir=data, config=config, max_iters_per_epoch=1,
                              progress=False, init="shipped")
    detector, label_map, meta = load_checkpoint(checkpoint)
    assert meta["init"] == "shipped" and meta["kept_tensors"] > 100
    assert sorted(meta["reinitialised"]) == ["head.classification_head.cls_logits.bias",
                                             "head.classification_head.cls_logits.weight"]
    assert label_map.names[0].startswith("part-")
    with pytest.raises(ConfigError, match="unknown init"):
        train_preset("student", tmp_path / "x", data_dir=data, config=config, init="imagenet")


def test_init_shipped_is_for_presets_only(tmp_path, capsys):
    from compresskit.cli import main

    code = main(["train", "--backbone", "mobilenet_v3_small", "--init", "shipped", "--out", str(tmp_path)])
    assert code == 2 and "--preset only" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
