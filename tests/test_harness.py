"""The harness: a variant becomes a record with its own artifact size and a paired speed-up; studies load through
the profile-aware loaders, so a record's profile is what was actually loaded (both profiles, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import get_model_weights

from compresskit import harness
from compresskit.data import coco_subset
from compresskit.engine import make_loader
from compresskit.data import load_split
from compresskit.models import COCO_PRESETS, EMBEDDED_PRESETS, build_coco_architecture, build_detector
from compresskit.report import compare, write_records, read_results


@pytest.fixture(scope="module")
def small_study(tiny_embedded):
    torch.manual_seed(0)
    detector = build_detector(EMBEDDED_PRESETS["student"]).eval()
    val = load_split("val", tiny_embedded)
    study = harness.Study(lesson="test", model="student", profile="embedded",
                          val_loader=make_loader(val, batch_size=4, train=False), label_map=val.label_map, runs=5)
    return study, detector


def test_first_record_is_the_baseline_and_later_ones_are_paired_with_it(small_study):
    study, detector = small_study
    base = study.measure(detector, "test/base", technique="baseline")
    assert base["baseline"] is None and base["paired_latency"] is None
    again = study.measure(detector, "test/again", technique="baseline")
    paired = again["paired_latency"]
    assert again["baseline"] == "test/base" and paired["baseline"] == "test/base" and paired["pairs"] == 5
    low, high = paired["interval"]
    assert low <= paired["speedup"] <= high
    assert compare(again, base)["latency_speedup"] == paired["speedup"]
    assert again["map"] == base["map"] and again["macs"] == base["macs"] and again["profile"] == "embedded"


def test_baseline_must_belong_to_the_same_study(small_study):
    study, detector = small_study
    with pytest.raises(ValueError, match="not a record of this study"):
        study.measure(detector, "test/orphan", technique="baseline", baseline="somewhere/else")


def test_onnx_record_ships_the_onnx_file_and_an_artifact_is_measured_by_its_own_size(small_study, tmp_path):
    study, detector = small_study
    eager = study.measure(detector, "test/eager", technique="baseline", baseline=None)
    ort = study.measure(detector, "test/ort", technique="baseline", runtime="onnxruntime", baseline=eager["id"])
    onnx_files = list((harness.variant.artifact_dir()).glob("test_ort.onnx"))
    assert ort["size_bytes"] == onnx_files[0].stat().st_size != eager["size_bytes"]
    assert abs(ort["map"] - eager["map"]) < 0.01
    shipped = tmp_path / "int8.bin"
    shipped.write_bytes(b"\x01" * 12345)
    custom = study.measure(detector, "test/artifact", technique="static_ptq", artifact=shipped)
    assert custom["size_bytes"] == 12345 and custom["params"] == eager["params"]


def test_records_write_with_their_pairs(small_study, tmp_path):
    study, _ = small_study
    path = write_records(study.records, reports_dir=tmp_path)
    written = {record["id"]: record for record in read_results(path)["records"]}
    assert written["test/again"]["paired_latency"]["baseline"] == "test/base"


def test_embedded_profile_study_is_stamped_embedded(tiny_profile):
    study = harness.baseline_study(models=("student",), val_images=4, runs=3)
    assert [r["id"] for r in study.records] == ["baseline/student/eager", "baseline/student/ort-fp32"]
    assert {r["profile"] for r in study.records} == {"embedded"}
    assert study.records[1]["paired_latency"]["baseline"] == "baseline/student/eager"


@pytest.mark.slow
def test_coco_profile_study_loads_coco_data_and_weights_and_says_so(coco_tiny, tmp_path, monkeypatch):
    """COMPRESSKIT_PROFILE=coco, offline: the subset is built from a local COCO source, the weights come from a
    locally saved state dict in the weights cache, and every record says ``coco``."""
    monkeypatch.setenv("COMPRESSKIT_PROFILE", "coco")
    monkeypatch.setenv("COMPRESSKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("COMPRESSKIT_COCO_ROOT", str(coco_tiny))
    monkeypatch.setenv("COMPRESSKIT_WEIGHTS", str(tmp_path / "weights"))
    small = coco_subset.SubsetRecipe(split="train2017", images=2, seed=0)
    monkeypatch.setattr(coco_subset, "DEFAULT_RECIPES", {"train2017": small, "val2017": small})
    weights = get_model_weights(COCO_PRESETS["student"]).DEFAULT
    cached = tmp_path / "weights" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_coco_architecture("student", num_classes=91).state_dict(), cached)

    loaded = harness.load_for_study("student")
    assert loaded.profile == "coco" and type(loaded.model).__name__ == "SSD"
    study = harness.baseline_study(models=("student",), runs=3)
    assert {r["profile"] for r in study.records} == {"coco"}
    assert study.records[0]["config"]["source"] == "torchvision COCO weights"
    assert len(study.val_loader.dataset) == 2
