"""The distillation and backbone studies: trained variants read from the package (shipped checkpoint, or only its
training record), measured against the right baselines, with mAP taken from the record only where no checkpoint
ships. The package's checkpoint folder is replaced by a temporary one holding small stand-ins."""

from __future__ import annotations

import json

import pytest

from compresskit import harness
from compresskit.engine import METRIC_NAMES, TrainConfig
from compresskit.models import checkpoint_spec, load_checkpoint, save_checkpoint, shipped_checkpoint


@pytest.fixture
def package_checkpoints(tmp_path, monkeypatch):
    """A temporary checkpoint folder in place of the package's, as the harness looks checkpoints up."""
    import compresskit.models as models

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setattr(models, "shipped_checkpoint", lambda name: folder / f"{name}.pt")
    return folder


def _ship_copy(source: str, folder, name: str, checkpoint: bool = True, **meta_changes) -> dict:
    """Copy a shipped checkpoint (or only its record) under another name; returns the record written."""
    meta = json.loads(shipped_checkpoint(source).with_suffix(".json").read_text())
    meta.update(meta_changes)
    if checkpoint:  # the checkpoint carries the same metadata as its record, as ship_checkpoint writes them
        detector, label_map, _ = load_checkpoint(shipped_checkpoint(source))
        save_checkpoint(folder / f"{name}.pt", detector, checkpoint_spec(shipped_checkpoint(source)), label_map,
                        meta=meta)
    (folder / f"{name}.json").write_text(json.dumps(meta))
    return meta


def test_distillation_study_compares_students_with_the_control_and_pruned_with_the_teacher(
        tiny_profile, package_checkpoints):
    recorded = {key: 0.1 * (index + 1) for index, key in enumerate(METRIC_NAMES)}
    for method in ("none", "logit", "both"):
        _ship_copy("student", package_checkpoints, f"student_kd_{method}", kd_config={"method": method})
    _ship_copy("student", package_checkpoints, "student_kd_feature", checkpoint=False, val_metrics=recorded)
    _ship_copy("student", package_checkpoints, "student_kd_boxes", checkpoint=False, val_metrics=recorded)
    _ship_copy("student", package_checkpoints, "student_kd_boxes_control", checkpoint=False, val_metrics=recorded)
    _ship_copy("teacher_pruned", package_checkpoints, "teacher_pruned")
    _ship_copy("teacher_pruned", package_checkpoints, "teacher_pruned_kd", kd_config={"method": "both"})

    study = harness.distillation.distillation_study(val_images=4, runs=3)
    records = study.records_by_id
    teacher, control = records["distill/teacher/eager"], records["distill/student-none/eager"]
    assert teacher["technique"] == "baseline" and control["baseline"] == teacher["id"]
    box_control = records["distill/student-boxes-control/eager"]  # trained beside the box-distilled student
    assert (box_control["technique"], box_control["baseline"]) == ("baseline", teacher["id"])
    for method, technique, paired in (("logit", "logit_kd", control), ("feature", "feature_kd", control),
                                      ("both", "kd", control), ("boxes", "box_kd", box_control)):
        record = records[f"distill/student-{method}/eager"]
        assert (record["technique"], record["baseline"], record["model"]) == (technique, paired["id"], "student")
        assert record["paired_latency"]["baseline"] == paired["id"]
    shipped, unshipped = records["distill/student-logit/eager"], records["distill/student-feature/eager"]
    assert shipped["map"] == control["map"]  # the same weights, evaluated in this run
    assert {key: unshipped[key] for key in METRIC_NAMES} == recorded  # no checkpoint: the training record's mAP
    assert unshipped["config"]["map_source"].startswith("training record") and "training record" in \
        unshipped["variant"]
    assert unshipped["params"] == control["params"] and unshipped["macs"] == control["macs"]
    for name in ("teacher-pruned", "teacher-pruned-kd"):
        record = records[f"distill/{name}/eager"]
        assert (record["technique"], record["baseline"]) == ("structured_pruning", teacher["id"])
        assert record["macs"] < teacher["macs"] / 2
    assert records["distill/teacher-pruned-kd/eager"]["config"]["kd_config"] == {"method": "both"}
    assert {record["profile"] for record in study.records} == {"embedded"}


def test_backbone_study_measures_each_trunk_in_three_runtimes(tiny_profile, package_checkpoints):
    from compresskit.backbones import train_backbone

    recipe = TrainConfig(epochs=1, batch_size=4, warmup_iters=1)
    train_backbone("mobilenet_v3_small", package_checkpoints, config=recipe, data_dir=tiny_profile,
                   max_iters_per_epoch=1, progress=False)
    trained = json.loads((package_checkpoints / "backbone_mobilenet_v3_small.json").read_text())
    recorded = {key: 0.01 * (index + 1) for index, key in enumerate(METRIC_NAMES)}
    (package_checkpoints / "backbone_shufflenet_v2_x1_0.json").write_text(
        json.dumps({**trained, "backbone": "shufflenet_v2_x1_0", "val_metrics": recorded}))

    study = harness.backbones.backbone_study(val_images=4, runs=3, calibration_images=4,
                                             backbones=["mobilenet_v3_small", "shufflenet_v2_x1_0"],
                                             trunk_float=["mobilenet_v3_small"])
    records = study.records_by_id
    eager, ort = records["backbones/teacher/eager"], records["backbones/teacher/ort-fp32"]
    assert eager["baseline"] is None and ort["baseline"] == eager["id"] and ort["runtime"] == "onnxruntime"
    for name in ("mobilenet_v3_small", "shufflenet_v2_x1_0"):
        own_eager, own_ort, own_int8 = (records[f"backbones/{name}/{runtime}"]
                                        for runtime in ("eager", "ort-fp32", "ort-int8"))
        assert (own_eager["technique"], own_eager["baseline"], own_eager["model"]) == ("backbone", eager["id"], name)
        assert (own_ort["technique"], own_ort["baseline"]) == ("backbone", ort["id"])
        assert (own_int8["technique"], own_int8["baseline"]) == ("static_ptq", own_ort["id"])
        assert own_int8["size_bytes"] < own_ort["size_bytes"] / 3  # int8 weights in the file
        assert own_eager["macs"] < eager["macs"] and own_eager["params"] < eager["params"]
    shipped = records["backbones/mobilenet_v3_small/ort-int8"]
    assert 0.0 <= shipped["map"] <= 1.0  # measured in this run, on the study's val images
    assert shipped["config"]["map_source"].startswith(("whole val split", "val slice"))
    unshipped = records["backbones/shufflenet_v2_x1_0/ort-fp32"]
    assert {key: unshipped[key] for key in METRIC_NAMES} == recorded
    assert records["backbones/shufflenet_v2_x1_0/ort-int8"]["map"] is None  # untrained weights: not measured
    for runtime in ("eager", "ort-fp32", "ort-int8"):  # nor is their gzip size; the raw size is the real one's
        stand_in, real = (records[f"backbones/{name}/{runtime}"] for name in ("shufflenet_v2_x1_0", "mobilenet_v3_small"))
        assert stand_in["size_gzip_bytes"] is None and stand_in["size_bytes"] > 0 and real["size_gzip_bytes"] > 0

    # The trunk-in-float control: only where asked, against the same fp32 core, with the trunk's weights in float.
    control = records["backbones/mobilenet_v3_small/ort-int8-trunk-fp32"]
    assert control["baseline"] == "backbones/mobilenet_v3_small/ort-fp32"
    assert list(control["config"]["config"]["exclude"]) == ["/backbone/body/"] and control["config"]["excluded_nodes"] > 0
    assert records["backbones/mobilenet_v3_small/ort-int8"]["size_bytes"] < control["size_bytes"]
    assert "backbones/shufflenet_v2_x1_0/ort-int8-trunk-fp32" not in records

    rows = {row["name"]: row for row in harness.backbones.tradeoff_rows(study.records)}
    assert set(rows) == {"mobilenet_v3_small", "shufflenet_v2_x1_0"}
    assert rows["shufflenet_v2_x1_0"]["map"] == recorded["map"]
    assert rows["shufflenet_v2_x1_0"]["map_source"] == "training record"
    assert rows["mobilenet_v3_small"]["map_source"] == "measured"
    own_ort = records["backbones/mobilenet_v3_small/ort-fp32"]
    assert rows["mobilenet_v3_small"]["map_gap"] == pytest.approx(ort["map"] - own_ort["map"])
    assert rows["mobilenet_v3_small"]["speedup"] == own_ort["paired_latency"]["speedup"]
    assert rows["mobilenet_v3_small"]["int8_map"] == shipped["map"]
    full_val = {"teacher": {key: 0.9 for key in METRIC_NAMES}, "mobilenet_v3_small": recorded,
                "shufflenet_v2_x1_0": recorded}
    replaced = harness.backbones.tradeoff_rows(study.records, reference_metrics=full_val)
    assert all(row["map_gap"] == pytest.approx(0.9 - recorded["map"]) and row["int8_map"] is None
               for row in replaced)
    figure = harness.backbones.plot_tradeoffs(replaced, teacher_map=0.9)
    assert len(figure.axes[0].collections) >= 4  # fp32 and int8 points of both backbones


def test_tradeoff_rows_need_the_teachers_record():
    with pytest.raises(ValueError, match="backbones/teacher/ort-fp32"):
        harness.backbones.tradeoff_rows([])


def test_a_variant_with_neither_checkpoint_nor_record_names_the_command(package_checkpoints):
    from compresskit.errors import CompressKitError

    with pytest.raises(CompressKitError, match="backbone_resnet18.json.*README"):
        harness.load_trained("backbone_resnet18", untrained=lambda meta: None)
