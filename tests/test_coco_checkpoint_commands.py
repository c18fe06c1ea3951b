"""The coco recipe's commands, offline: ``data coco-split`` turns the coco profile's subsets (the stand-in) into a
split folder, and a torchvision detector fine-tuned on it with ``--init coco-pretrained`` goes through ``prune``,
``study`` and ``search`` like the kit's own detectors (the COCO weights are random values under torchvision's file
name); ``quantize`` takes the coco profile's student. The student is SSDlite: no FPN, and a head the kit's
location-by-location distiller cannot read, so the search prunes its trunk only and distils through boxes.
Mechanics, not accuracy."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.ssd import SSD

from offline_coco import offline_coco_environment

import compresskit.harness.search as search_module
from compresskit.cli import main
from compresskit.data import require_clean_layout
from compresskit.distill import default_method
from compresskit.engine import TrainConfig
from compresskit.engine.recipes import train_preset
from compresskit.errors import ConfigError
from compresskit.harness.search import _seeds, part_groups, part_ratios_for
from compresskit.models import build_coco_architecture, load_checkpoint
from compresskit.quantize.qat import detection_loss


@pytest.fixture(scope="module")
def coco_stand_in(tmp_path_factory) -> dict[str, str]:
    """The offline stand-in's environment: a COCO install, subset recipes and (random) COCO weights."""
    return offline_coco_environment(tmp_path_factory.mktemp("coco_stand_in"))


@pytest.fixture(scope="module")
def coco_fine_tuned(tmp_path_factory, coco_stand_in) -> tuple[Path, Path]:
    """The coco profile's subsets as a split folder (``data coco-split``, from the offline stand-in) and
    torchvision's SSDlite fine-tuned on it for one step from (random) COCO weights: the coco recipe's first two
    commands."""
    root = tmp_path_factory.mktemp("coco_checkpoint")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in coco_stand_in.items():
            patch.setenv(name, value)
        assert main(["data", "coco-split", "--out", str(root / "split")]) == 0
        checkpoint = train_preset("student", root / "ft", data_dir=root / "split",
                                  config=TrainConfig(epochs=1, batch_size=2, warmup_iters=1, workers=0),
                                  max_iters_per_epoch=1, progress=False, init="coco-pretrained")
    return checkpoint, root / "split"


def test_the_coco_split_folder_holds_both_pinned_subsets_in_the_kits_layout(coco_fine_tuned):
    checkpoint, split = coco_fine_tuned
    assert load_checkpoint(checkpoint)[2]["class_slots"] == "carried over by COCO category"  # COCO's own classes
    require_clean_layout(split)
    images = {name: json.loads((split / "annotations" / f"instances_{name}.json").read_text())["images"]
              for name in ("train", "val")}
    assert (len(images["train"]), len(images["val"])) == (24, 12)  # the stand-in's recipes
    assert all((split / image["file_name"]).is_file() for subset in images.values() for image in subset)


@pytest.mark.slow
def test_prune_a_coco_pretrained_checkpoint(coco_fine_tuned, tmp_path, capsys):
    checkpoint, data = coco_fine_tuned
    assert main(["prune", "--preset", "student", "--checkpoint", str(checkpoint), "--data", str(data), "--kd",
                 "both", "--epochs", "1", "--max-iters", "1", "--out", str(tmp_path / "kd")]) == 2
    assert "--kd boxes" in capsys.readouterr().err and not (tmp_path / "kd").exists()
    # --kd alone: distilled through the unpruned detector's boxes, the one distillation an SSD can take.
    assert main(["prune", "--preset", "student", "--checkpoint", str(checkpoint), "--data", str(data),
                 "--ratio", "0.3", "--epochs", "1", "--max-iters", "1", "--kd", "--out", str(tmp_path)]) == 0
    pruned_files = list(tmp_path.glob("*.pt"))
    assert len(pruned_files) == 1
    pruned, label_map, meta = load_checkpoint(pruned_files[0])
    original = load_checkpoint(checkpoint)[0]
    assert isinstance(pruned, SSD) and label_map.category_ids == load_checkpoint(checkpoint)[1].category_ids
    assert meta["method"] == "boxes" and len(meta["kd_steps"]) == 1
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in original.parameters())


@pytest.mark.slow
def test_distill_a_coco_pretrained_student_through_a_fine_tuned_detectors_boxes(coco_fine_tuned, coco_stand_in,
                                                                                tmp_path, monkeypatch, capsys):
    checkpoint, data = coco_fine_tuned
    for name, value in coco_stand_in.items():
        monkeypatch.setenv(name, value)  # --init coco-pretrained reads the cached weights
    command = ["distill", "--student", "student", "--init", "coco-pretrained", "--data", str(data),
               "--teacher", "student", "--teacher-checkpoint", str(checkpoint), "--epochs", "1", "--max-iters", "2",
               "--warmup-iters", "0", "--out", str(tmp_path)]
    no_teacher = [argument for argument in command if argument not in ("--teacher-checkpoint", str(checkpoint))]
    assert main([*no_teacher, "--method", "boxes"]) == 2  # the shipped teacher never saw the split's categories
    assert "--teacher-checkpoint" in capsys.readouterr().err
    assert main([*command, "--method", "both"]) == 2  # SSDlite's head has no locations to pair
    assert "method 'boxes'" in capsys.readouterr().err and not list(tmp_path.glob("*.pt"))
    assert main([*command, "--method", "boxes", "--box-score", "0.05"]) == 0
    student, label_map, meta = load_checkpoint(tmp_path / "student_kd_boxes.pt")
    assert isinstance(student, SSD) and label_map == load_checkpoint(checkpoint)[1]
    assert meta["init"] == "coco-pretrained" and meta["method"] == "boxes" and meta["kd_config"]["box_score"] == 0.05
    assert [set(row) for row in meta["kd_steps"]] == [{"step", "teacher_boxes_per_image", "added_share"}] * 2


@pytest.mark.slow
def test_study_and_search_on_a_coco_pretrained_checkpoint(coco_fine_tuned, tmp_path, monkeypatch):
    checkpoint, data = coco_fine_tuned
    study = tmp_path / "study"
    assert main(["study", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(study),
                 "--finetune-steps", "2", "--calibration-images", "4", "--runs", "3"]) == 0
    records = json.loads((study / "results.json").read_text())["records"]
    assert {record["profile"] for record in records} == {"custom"}
    assert any(record["runtime"] == "onnxruntime" and "int8" in record["id"] for record in records)

    monkeypatch.setattr(search_module, "RESOLUTION_POINTS", 100.0)  # 4 val images: mechanics only
    out = tmp_path / "search"
    code = main(["search", "--checkpoint", str(checkpoint), "--data", str(data), "--trials", "3",
                 "--proxy-steps", "1", "--full-steps", "2", "--runs", "3", "--runtimes", "onnxruntime",
                 "--out", str(out)])
    records = json.loads((out / "results.json").read_text())["records"]
    assert code == (0 if any(record["config"].get("chosen") for record in records) else 1)
    chains = [record["config"]["recipe"] for record in records if "recipe" in record["config"]]
    assert chains, "the search measured no chain"
    assert {part for chain in chains for part in chain["part_ratios"]} <= {"features", "extra"}


def test_an_ssd_has_only_a_trunk_to_prune_and_distils_through_boxes():
    ssd = build_coco_architecture("student", num_classes=4)
    assert part_groups(ssd) == ("trunk",)
    assert set(part_ratios_for(ssd, trunk=0.3)) == {"features", "extra"}
    with pytest.raises(ConfigError, match="no fpn"):
        part_ratios_for(ssd, trunk=0.3, fpn=0.2)
    assert default_method(ssd) == default_method(build_coco_architecture("teacher", num_classes=4)) == "boxes"
    seeds = _seeds(["student"], kd=False, groups=("trunk",))
    assert seeds and not any(seed["kd"] for seed in seeds)
    assert any(seed["kd"] for seed in _seeds(["student"], groups=("trunk",)))
    assert all(set(seed) == {"start", "ratio_trunk", "kd", "keep_float"} for seed in seeds)
    assert len({tuple(sorted(seed.items())) for seed in seeds}) == len(seeds)  # each chain once
    assert any(seed["kd"] for seed in _seeds(["teacher", "teacher_bnhead"]))  # FCOS keeps its distilled chains


def test_qat_calls_each_detectors_own_loss():
    retinanet, fcos = mock.MagicMock(spec=RetinaNet), mock.MagicMock(spec=FCOS)
    detection_loss(retinanet, ["t"], {"cls_logits": 0}, ["a"], [4, 1])
    retinanet.compute_loss.assert_called_once_with(["t"], {"cls_logits": 0}, ["a"])  # matched by IoU, no levels
    detection_loss(fcos, ["t"], {"cls_logits": 0}, ["a"], [4, 1])
    fcos.compute_loss.assert_called_once_with(["t"], {"cls_logits": 0}, ["a"], [4, 1])
    with pytest.raises(ConfigError, match="FCOS and RetinaNet"):
        detection_loss(mock.MagicMock(spec=SSD), [], {}, [], [])


@pytest.mark.slow
def test_quantize_the_coco_profiles_student_with_the_runtime_the_cpu_runs_fastest(tmp_path, monkeypatch):
    for name, value in {**offline_coco_environment(tmp_path / "coco"), "COMPRESSKIT_COCO_IMAGE_SIZE": "128"}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "int8"
    assert main(["quantize", "--preset", "student", "--runtime", "auto", "--calibration-images", "4", "--runs", "3",
                 "--out", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    assert {record["profile"] for record in records} == {"coco"}
    assert {record["runtime"] for record in records} >= {"onnxruntime", "openvino"}
